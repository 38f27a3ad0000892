// The sign-in page: POST /api/login starts a session (an HttpOnly cookie), then back
// to where the person was going. The default mode on this machine needs no sign-in.
const form = document.getElementById("login");
const error = document.getElementById("error");

function next() {
  const target = new URLSearchParams(location.search).get("next") || "/";
  // only our own paths: never another site, never a protocol-relative URL
  return target.startsWith("/") && !target.startsWith("//") && !target.startsWith("/login") ? target : "/";
}

async function signedInAlready() {
  try {
    const response = await fetch("/api/me", { credentials: "same-origin" });
    if (!response.ok) return;
    const me = await response.json();
    if (!me.auth_required || me.csrf_token) location.replace(next());
  } catch {
    // the server will tell on submit
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const name = form.elements.name.value.trim();
  const password = form.elements.password.value;
  if (!name || !password) {
    error.textContent = "Enter your user name and password.";
    (name ? form.elements.password : form.elements.name).focus();
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const response = await fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, password }),
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      error.textContent = body.detail || `Sign-in failed (HTTP ${response.status}).`;
      form.elements.password.select();
      return;
    }
    location.assign(next());
  } catch {
    error.textContent = "The server is unreachable. Try again in a moment.";
  } finally {
    button.disabled = false;
  }
});

signedInAlready();
