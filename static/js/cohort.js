/* The cohort page: label, split and location edited in place (PATCH /api/slides/{id}/), the
   slide table refreshed after uploads, and the members' roles. */
(function () {
  "use strict";
  const { api, h, say } = window.TM;
  const config = window.TM.jsonData("upload-config");
  const cohort = config.cohort;
  const container = document.getElementById("slides-table");
  const tableStatus = document.getElementById("table-status");

  async function refreshTable() {
    try {
      const response = await fetch(container.dataset.url + window.location.search,
                                   { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      container.innerHTML = await response.text();
      container.dispatchEvent(new CustomEvent("tm:table-refreshed", { bubbles: true }));
    } catch (err) {
      say(tableStatus, `The slide table could not be refreshed: ${err.message}`, "error");
    }
  }
  document.addEventListener("tm:slides-changed", refreshTable);

  async function saveField(control) {
    const row = control.closest("tr[data-slide]");
    const field = control.dataset.field;
    const name = row.dataset.filename;
    const value = control.value;
    control.disabled = true;
    try {
      const slide = await api(`/api/slides/${row.dataset.slide}/`, { method: "PATCH", body: { [field]: value } });
      control.dataset.saved = slide[field];
      control.value = slide[field];
      say(tableStatus, `Saved: ${field} of ${name} is ${slide[field] || "empty"}.`, "ok");
      // A split belongs to the whole case: the case's other slides moved too.
      if (field === "split") await refreshTable();
    } catch (err) {
      if (control.dataset.saved !== undefined) control.value = control.dataset.saved;
      say(tableStatus, `${name}: ${err.message}`, "error");
    } finally {
      control.disabled = false;
    }
  }

  // Delegated: the table is replaced after uploads, its controls with it.
  container.addEventListener("focusin", (event) => {
    const control = event.target.closest(".inline-edit");
    if (control && control.dataset.saved === undefined) control.dataset.saved = control.value;
  });
  container.addEventListener("change", (event) => {
    const control = event.target.closest(".inline-edit");
    if (!control) return;
    if (control.dataset.saved === undefined) {
      const selected = control.tagName === "SELECT"
        ? Array.from(control.options).find((o) => o.defaultSelected) : null;
      control.dataset.saved = selected ? selected.value : control.defaultValue;
    }
    saveField(control);
  });
  container.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.matches("input.inline-edit")) {
      event.preventDefault();
      event.target.blur(); // "change" fires and saves
    }
  });

  // -- members ---------------------------------------------------------------------------------
  const members = document.getElementById("members");
  const memberStatus = document.getElementById("member-status");
  const memberForm = document.getElementById("member-form");
  const roleChoices = memberForm
    ? Array.from(document.getElementById("member-role").options).map((o) => [o.value, o.text]) : [];

  function memberRow(member) {
    const select = h("select", { class: "member-role", "aria-label": `Role of ${member.username}` },
      roleChoices.map(([value, text]) => h("option", { value, selected: value === member.role, text })));
    return h("tr", { "data-user": String(member.user) },
      h("td", { text: member.username }),
      h("td", {}, select),
      h("td", {}, h("time", { datetime: member.since, text: String(member.since).slice(0, 10) })),
      h("td", {}, h("button", { type: "button", class: "secondary small member-remove",
                                text: `Remove ${member.username}` })));
  }

  if (memberForm) {
    memberForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const username = memberForm.username.value.trim();
      try {
        const member = await api(`/api/cohorts/${cohort}/members/`, {
          method: "POST", body: { username, role: memberForm.role.value },
        });
        members.tBodies[0].append(memberRow(member));
        say(memberStatus, `${member.username} is now a ${member.role}.`, "ok");
        memberForm.reset();
      } catch (err) {
        say(memberStatus, err.message, "error");
      }
    });
  }
  if (members) {
    members.addEventListener("change", async (event) => {
      const select = event.target.closest(".member-role");
      if (!select) return;
      const row = select.closest("tr");
      try {
        const member = await api(`/api/cohorts/${cohort}/members/${row.dataset.user}/`, {
          method: "PATCH", body: { role: select.value },
        });
        say(memberStatus, `${member.username} is now a ${member.role}.`, "ok");
      } catch (err) {
        say(memberStatus, err.message, "error");
      }
    });
    members.addEventListener("click", async (event) => {
      const button = event.target.closest(".member-remove");
      if (!button) return;
      const row = button.closest("tr");
      const name = row.cells[0].textContent;
      if (!window.confirm(`Remove ${name} from this cohort?`)) return;
      try {
        await api(`/api/cohorts/${cohort}/members/${row.dataset.user}/`, { method: "DELETE" });
        row.remove();
        say(memberStatus, `${name} was removed.`, "ok");
      } catch (err) {
        say(memberStatus, err.message, "error");
      }
    });
  }
})();
