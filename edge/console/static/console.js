// agegate till console: small vanilla script. The pages work without it (forms, links);
// it refreshes the status, draws the installer view and the photo results.
"use strict";

const ZONE_COLOUR = "#ffb300", FACE_COLOUR = "#00e676", OTHER_COLOUR = "#b0b7c3";

function wait(ms) { return new Promise((ok) => setTimeout(ok, ms)); }

async function detail(response) {
  try { return (await response.json()).detail || response.statusText; } catch { return response.statusText; }
}

// --- status: reload the panel every 2 s ------------------------------------------------------------
async function statusPage() {
  const panel = document.getElementById("status-panel");
  for (;;) {
    await wait(2000);
    if (document.hidden) continue;
    try {
      const r = await fetch("/console/status-panel", { cache: "no-store" });
      if (r.ok) panel.innerHTML = await r.text();
    } catch { /* the daemon restarting: try again */ }
  }
}

// --- drawing ------------------------------------------------------------------------------------------
function label(ctx, text, x, y, colour) {
  ctx.font = "bold 16px system-ui, sans-serif";
  const w = ctx.measureText(text).width + 8;
  ctx.fillStyle = colour;
  ctx.fillRect(x, Math.max(0, y - 22), w, 22);
  ctx.fillStyle = "#000";
  ctx.fillText(text, x + 4, Math.max(16, y - 6));
}

function box(ctx, [x, y, w, h], colour, text) {
  ctx.lineWidth = 3;
  ctx.strokeStyle = colour;
  ctx.strokeRect(x, y, w, h);
  if (text) label(ctx, text, x, y, colour);
}

function drawZone(ctx, z, width, height) {
  const [x0, y0, x1, y1] = [z.x0 * width, z.y0 * height, z.x1 * width, z.y1 * height];
  ctx.fillStyle = "rgba(0, 0, 0, 0.35)";  // dim what the till ignores
  ctx.fillRect(0, 0, width, y0);
  ctx.fillRect(0, y1, width, height - y1);
  ctx.fillRect(0, y0, x0, y1 - y0);
  ctx.fillRect(x1, y0, width - x1, y1 - y0);
  ctx.setLineDash([10, 6]);
  ctx.lineWidth = 3;
  ctx.strokeStyle = ZONE_COLOUR;
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  ctx.setLineDash([]);
}

// --- installer view: live picture a few times a second, zone editing ---------------------------------
async function installerPage() {
  const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
  const form = document.getElementById("zone-form"), msg = document.getElementById("zone-msg");
  const info = document.getElementById("frame-info"), list = document.getElementById("faces");
  const edges = ["x0", "y0", "x1", "y1"];
  const img = new Image();
  let live = null, drag = null;

  const formZone = () => Object.fromEntries(edges.map((k) => [k, parseFloat(form.elements[k].value)]));
  const setForm = (z) => edges.forEach((k) => { form.elements[k].value = +z[k].toFixed(3); });

  function draw() {
    if (!live || !live.frame) return;
    const { width, height } = live.frame;
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    ctx.drawImage(img, 0, 0);
    drawZone(ctx, formZone(), width, height);
    for (const f of live.faces) {
      if (f.in_zone) box(ctx, f.box, FACE_COLOUR, f.age === null ? "face" : `${f.age.toFixed(1)} y`);
      else box(ctx, f.box, OTHER_COLOUR, "outside zone");
    }
    window.agegateDrawn = live.faces;  // what is on the canvas now (the browser tests read it)
  }

  function describe() {
    const { frame, faces, camera } = live;
    info.textContent = frame ? `Camera ${camera}; picture ${frame.width}×${frame.height}, ${frame.age_s.toFixed(1)} s old.`
                             : `Camera ${camera}; no picture yet.`;
    const lines = (faces.length ? faces : [null]).map((f, i) => {
      if (!f) return "No face in the picture.";
      if (!f.in_zone) return `Face ${i + 1}: outside the customer zone.`;
      return f.age === null ? `Face ${i + 1}: in the zone, not estimated (only the largest are).`
                            : `Face ${i + 1}: about ${f.age.toFixed(1)} years, in the customer zone.`;
    });
    if (lines.join("\n") === list.innerText.trim()) return;  // the list is aria-live: only real changes
    list.replaceChildren(...lines.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  }

  img.onload = draw;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
  };
  canvas.addEventListener("pointerdown", (e) => { drag = point(e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const [x, y] = point(e);
    setForm({ x0: Math.min(drag[0], x), y0: Math.min(drag[1], y), x1: Math.max(drag[0], x), y1: Math.max(drag[1], y) });
    msg.textContent = "Zone changed: save it to apply.";
    draw();
  });
  canvas.addEventListener("pointerup", () => { drag = null; });
  form.addEventListener("input", () => { msg.textContent = "Zone changed: save it to apply."; draw(); });

  async function send(method, body) {
    const r = await fetch("/console/api/zone", {
      method, headers: { "content-type": "application/json" }, body: body && JSON.stringify(body),
    });
    if (!r.ok) { msg.textContent = `Not saved: ${await detail(r)}`; return; }
    const z = await r.json();
    setForm(z.current);
    msg.textContent = z.saved ? `Saved: the till now uses ${z.text}.` : `Reset: the till uses AGEGATE_CUSTOMER_ZONE ${z.text}.`;
    draw();
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); send("PUT", formZone()); });
  document.getElementById("zone-reset").addEventListener("click", () => send("DELETE"));

  for (;;) {  // one request at a time, about 4 a second, only while the page is visible
    if (!document.hidden) {
      try {
        const r = await fetch("/console/api/live", { cache: "no-store" });
        if (r.ok) {
          live = await r.json();
          describe();
          if (live.frame) img.src = "data:image/jpeg;base64," + live.frame.jpeg;
        }
      } catch { info.textContent = "The daemon does not answer; retrying."; }
    }
    await wait(250);
  }
}

// --- try a photo: upload, then draw the boxes on the local copy --------------------------------------------
function photoPage() {
  const form = document.getElementById("photo-form"), msg = document.getElementById("photo-msg");
  const canvas = document.getElementById("photo-view"), table = document.getElementById("photo-faces");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = form.elements.image.files[0];
    if (!file) return;
    msg.className = "";
    msg.textContent = "Estimating…";
    const body = new FormData();
    body.append("image", file);
    const r = await fetch("/console/api/photo", { method: "POST", body });
    if (!r.ok) { msg.className = "warn"; msg.textContent = `Not estimated: ${await detail(r)}`; return; }
    const result = await r.json();
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    canvas.width = result.width;
    canvas.height = result.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0, result.width, result.height);
    const scale = Math.max(1, result.width / 640);  // keep lines and labels readable on big photos
    ctx.scale(scale, scale);
    result.faces.forEach((f) => box(ctx, f.box.map((v) => v / scale), FACE_COLOUR, `${f.age.toFixed(1)} y`));
    const rows = result.faces.map((f, i) => {
      const tr = document.createElement("tr");
      for (const [text, cls] of [[i + 1, ""], [f.age.toFixed(1), "num"], [f.box.join(", "), ""]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    });
    if (!rows.length) rows.push(Object.assign(document.createElement("tr"), { innerHTML: '<td colspan="3">No face found.</td>' }));
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = false;
    msg.textContent = `${result.faces.length} face${result.faces.length === 1 ? "" : "s"} found in ${result.ms} ms ` +
                      `by ${result.model.name} ${result.model.version}.`;
  });
}

const pages = { status: statusPage, installer: installerPage, photo: photoPage };
pages[document.body.dataset.page]?.();
