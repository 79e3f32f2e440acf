// publish.js owns the publish form: the page publishes one event (name, text payload)
// and says when its node has taken it (after flush) or why not.

import { clock } from "./format.js";

export function createPublish(els) {
  let client = null;
  const status = (text, state) => {
    els.status.textContent = text;
    els.status.dataset.state = state;
  };
  els.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = els.name.value.trim();
    if (!client) return status("not connected", "error");
    try {
      client.publish(name, els.data.value);
      await client.flush();
      status(`sent ${name} at ${clock()}`, "ok");
    } catch (err) {
      status(`${err.code ?? "error"}: ${err.detail ?? err.message}`, "error");
    }
  });
  return {
    attach(next) {
      client = next;
    },
    /** An error the node sent about a publish (permission_denied, bad_pattern...). */
    refused(err) {
      status(`${err.code}: ${err.detail ?? err.message}`, "error");
    },
  };
}
