// The "Unfinished uploads" card (Upload and Imports pages): every bundle upload the appliance holds that has not
// got all its bytes yet, with how much is in, who started it and when (GET /api/v1/uploads).
"use strict";

document.addEventListener("DOMContentLoaded", async function () {
  var card = document.getElementById("unfinished");
  if (!card) return;
  var resp;
  try {
    resp = await fetch("/api/v1/uploads", { credentials: "same-origin", cache: "no-store" });
  } catch (e) { return; }
  if (!resp.ok) return;
  var uploads = (await resp.json()).uploads;
  if (!uploads.length) return;
  var body = card.querySelector("tbody");
  uploads.forEach(function (u) {
    var tr = document.createElement("tr");
    [u.filename,
     u.percent.toFixed(1) + "% (" + cargohold.humanBytes(u.received) + " of " + cargohold.humanBytes(u.size) + ")",
     u.owner,
     new Date(u.createdAt * 1000).toLocaleString()].forEach(function (text) {
      var td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    });
    body.append(tr);
  });
  card.hidden = false;
});
