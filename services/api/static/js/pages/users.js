// Users (admins, when sign-in is on): create, disable, change role, reset password, tokens.
import { api, session } from "../api.js";
import { ago, badge, confirmButton, dateTime, emptyState, h, loading, pageHead, toast, fill } from "../dom.js";

function fail(what) {
  return (err) => {
    if (err.status !== 401) toast(`Could not ${what}: ${err.message}`, { error: true });
  };
}

function secretNote(text, secret) {
  return h("div", { class: "secret", role: "status" }, h("strong", {}, text), h("code", { class: "token-secret" }, secret));
}

function tokensPanel(user) {
  const body = h("div", {}, loading("Loading tokens…"));
  const shown = h("div");
  const name = h("input", { name: "token-name", value: "api token", "aria-label": `Name of a new token for ${user.name}` });
  const days = h("input", { name: "token-days", type: "number", min: "1", max: "3650", placeholder: "never", "aria-label": "Expires after days", class: "days" });
  const create = h("form", { class: "filters" },
    h("label", {}, "Token name", name),
    h("label", {}, "Expires after (days)", days),
    h("button", { type: "submit", class: "small" }, "Create token"));
  async function load() {
    const tokens = (await api(`/api/users/${encodeURIComponent(user.name)}/tokens`)).items;
    fill(body, tokens.length
      ? h("ul", { class: "files" }, tokens.map((t) => h("li", {},
        h("span", {}, h("strong", {}, t.name), h("span", { class: "muted small" },
          ` · created ${ago(t.created_at)}`,
          t.expires_at ? ` · expires ${dateTime(t.expires_at)}` : " · never expires",
          t.last_used_at ? ` · used ${ago(t.last_used_at)}` : " · never used",
          t.revoked_at ? " · revoked" : "")),
        t.revoked_at ? null : confirmButton("Revoke", "Really revoke?", () =>
          api(`/api/users/${encodeURIComponent(user.name)}/tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" }).then(load, fail("revoke"))))))
      : h("p", { class: "muted" }, "No tokens."));
  }
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    const json = { name: name.value.trim() || "api token" };
    if (days.value) json.expires_days = Number(days.value);
    try {
      const made = await api(`/api/users/${encodeURIComponent(user.name)}/tokens`, { method: "POST", json });
      fill(shown, secretNote(`Token "${made.name}" for ${user.name} — copy it now, it is not shown again:`, made.token));
      await load();
    } catch (err) {
      fail("create the token")(err);
    }
  });
  const details = h("details", {}, h("summary", {}, "Tokens"), shown, body, create);
  details.addEventListener("toggle", () => details.open && load().catch(fail("load tokens")));
  return details;
}

function passwordForm(user) {
  const input = h("input", { type: "password", name: "new-password", autocomplete: "new-password", minlength: "8", "aria-label": `New password for ${user.name}` });
  const form = h("form", { class: "prio" }, input, h("button", { type: "submit", class: "small" }, "Set password"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (input.value.length < 8) {
      toast("A password needs at least 8 characters.", { error: true });
      input.focus();
      return;
    }
    try {
      await api(`/api/users/${encodeURIComponent(user.name)}`, { method: "PATCH", json: { password: input.value } });
      input.value = "";
      toast(`Password of ${user.name} changed.`);
    } catch (err) {
      fail("change the password")(err);
    }
  });
  return form;
}

export async function usersPage(ctx) {
  if (!session.isAdmin) {
    fill(ctx.view, pageHead("Users"), emptyState("Only admins manage users."));
    return;
  }
  const list = h("div", { "aria-live": "polite" }, loading("Loading users…"));
  const name = h("input", { id: "user-name", name: "name", required: true, autocomplete: "off", pattern: "[A-Za-z0-9_-]{1,64}" });
  const password = h("input", { id: "user-password", name: "password", type: "password", required: true, autocomplete: "new-password", minlength: "8" });
  const role = h("select", { id: "user-role", name: "role" }, h("option", { value: "user" }, "user"), h("option", { value: "admin" }, "admin"));
  const formError = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "new-user-h" },
    h("h2", { id: "new-user-h" }, "Add a user"),
    h("div", { class: "filters" },
      h("label", { for: "user-name" }, "Name", name),
      h("label", { for: "user-password" }, "Password", password),
      h("label", { for: "user-role" }, "Role", role),
      h("button", { type: "submit", class: "primary" }, "Add user")),
    formError);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name.value)) {
      formError.textContent = "A name is 1–64 letters, digits, _ or -.";
      name.focus();
      return;
    }
    if (password.value.length < 8) {
      formError.textContent = "A password needs at least 8 characters.";
      password.focus();
      return;
    }
    try {
      await api("/api/users", { method: "POST", json: { name: name.value, password: password.value, role: role.value } });
      toast(`User ${name.value} added.`);
      name.value = "";
      password.value = "";
      await load();
    } catch (err) {
      if (err.status !== 401) formError.textContent = err.message;
    }
  });

  async function patch(user, json, what) {
    try {
      await api(`/api/users/${encodeURIComponent(user.name)}`, { method: "PATCH", json });
      await load();
    } catch (err) {
      fail(what)(err);
    }
  }

  async function load() {
    const users = (await api("/api/users")).items;
    if (!ctx.alive()) return;
    fill(list, h("div", { class: "table-wrap" }, h("table", { class: "cards users" },
      h("thead", {}, h("tr", {}, ["User", "Role", "Status", "Last sign-in", "Password", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, users.map((user) => {
        const self = user.name === session.me.name;
        return h("tr", { dataset: { user: user.name } },
          h("td", { class: "lead" }, h("strong", {}, user.name), h("span", { class: "sub" }, `added ${ago(user.created_at)}`), tokensPanel(user)),
          h("td", { "data-label": "Role" }, user.role,
            self ? null : h("button", { type: "button", class: "small", onclick: () => patch(user, { role: user.role === "admin" ? "user" : "admin" }, "change the role") },
              user.role === "admin" ? "Make user" : "Make admin")),
          h("td", { "data-label": "Status" }, badge(user.disabled ? "disabled" : "enabled", user.disabled ? "disabled" : "active"),
            self ? null : h("button", { type: "button", class: "small", onclick: () => patch(user, { disabled: !user.disabled }, user.disabled ? "enable" : "disable") },
              user.disabled ? "Enable" : "Disable")),
          h("td", { "data-label": "Last sign-in" }, user.last_login_at ? ago(user.last_login_at) : h("span", { class: "muted" }, "never")),
          h("td", { "data-label": "Password" }, passwordForm(user)),
          h("td", { "data-label": "" }, self ? h("span", { class: "muted small" }, "you") : confirmButton("Remove", "Really remove?", async () => {
            try {
              await api(`/api/users/${encodeURIComponent(user.name)}`, { method: "DELETE" });
              await load();
            } catch (err) {
              fail("remove the user")(err);
            }
          })),
        );
      })))));
  }

  fill(ctx.view, pageHead("Users", { sub: "Who may sign in, and with which role. Users see only their own tasks." }), form, list);
  await load();
}
