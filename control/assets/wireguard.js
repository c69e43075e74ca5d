// The console's one script (docs/console.md, "A configuration for a
// WireGuard app"): it makes the tunnel's key pair in this browser with
// WebCrypto, sends only the public half to the control plane (with the
// page's CSRF token), and turns the answer into a WireGuard configuration
// shown as text, a download and a QR code (qrcode.js, vendored). The
// private half never leaves the page.
"use strict";
(function () {
  const form = document.getElementById("wg-make");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const fromB64url = (s) =>
    Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

  function fail(message) {
    $("wg-error").textContent = message;
    $("wg-error").hidden = false;
    $("wg-result").hidden = true;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("wg-error").hidden = true;
    let pair;
    try {
      pair = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
    } catch (e) {
      fail("This browser cannot make an X25519 key (WebCrypto). Use `hushgate connect ... --wg-config FILE --qr` on a computer instead.");
      return;
    }
    const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    const privateKey = fromB64url((await crypto.subtle.exportKey("jwk", pair.privateKey)).d);
    const body = new URLSearchParams({ csrf: form.elements.csrf.value, public_key: b64(publicKey) });
    let resp, answer;
    try {
      resp = await fetch(form.action, { method: "POST", body, credentials: "same-origin", redirect: "error" });
      answer = await resp.json();
    } catch (e) {
      fail("The control plane did not answer (signed out, or offline). Reload the page and try again.");
      return;
    }
    if (!resp.ok) {
      fail(answer && answer.error ? answer.error.message : "The control plane refused: " + resp.status);
      return;
    }
    // Only what a name may hold goes into the file's comment line: a
    // newline there would be a line of the configuration.
    const services = answer.services
      .map((s) => String(s.name).replace(/[^A-Za-z0-9._@-]/g, "?") + " at " + answer.service_address + ":" + s.port)
      .join(", ");
    let text =
      "# hushgate admission " + answer.admission_id + " for server '" + form.dataset.server +
      "', expires " + answer.expires_at + "\n" +
      "# Services: " + services + "\n" +
      "[Interface]\nPrivateKey = " + b64(privateKey) + "\nAddress = " + answer.client_address + "/32\n\n" +
      "[Peer]\nPublicKey = " + answer.gateway_public_key + "\n";
    if (answer.preshared_key) text += "PresharedKey = " + answer.preshared_key + "\n";
    text +=
      "Endpoint = " + answer.gateway_endpoint + "\nAllowedIPs = " + answer.service_address +
      "/32\nPersistentKeepalive = 25\n";
    $("wg-config").textContent = text;
    $("wg-services").textContent = services;
    $("wg-expiry").textContent = answer.expires_at;
    const link = $("wg-download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    const qr = qrcode(0, "L");
    qr.addData(text);
    qr.make();
    $("wg-qr").src = qr.createDataURL(4, 4);
    $("wg-result").hidden = false;
  });
})();
