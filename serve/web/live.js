// d-zone live view: the chosen server's members as figures in an isometric yard, live over the
// d-zone WebSocket protocol (docs: docs/protocol.md). Plain browser JavaScript, no build step.
//
// Protocol as the d-zone client speaks it: wait for `server-list` (handled once per socket), answer
// `connect` (server null = default), rebuild the world on each `server-join`, apply `presence` and
// `message` only after the first join. Unlike the d-zone client this page reconnects after a close.
"use strict";

(() => {
  const LIMITS = {
    chatLog: 60, // lines kept in the side panel
    bubbleQueue: 3, // pending bubbles per member; older ones are dropped
    textChars: 300, // a bubble shows at most this many characters
    errorRetries: 5, // "connect default" attempts after errors while no world exists
    reconnectMaxMs: 30000,
  };
  const STATUSES = ["online", "idle", "dnd", "offline"];
  const STATUS_COLOURS = { online: "#43b581", idle: "#faa61a", dnd: "#f04747", offline: "#747f8d" };
  const OFFLINE_BODY = "#4f5561";
  const DEFAULT_COLOUR = "#c8ccd4";

  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const els = {
    picker: $("server-picker"), count: $("member-count"), members: $("members"), chat: $("chat-log"),
    connection: $("connection"), banner: $("banner"), serverName: $("server-name"), canvas: $("world"),
    counts: Object.fromEntries(STATUSES.map((s) => [s, $(`count-${s}`)])),
  };

  /** The world shown: one actor per member of the joined server. */
  const world = { server: null, serverName: "", joined: false, size: 12, actors: new Map() };
  let socket = null;
  let serverListSeen = false;
  let wanted = params.get("s"); // the server to ask for on the next server-list (null = default)
  let reconnectDelay = 1000;
  let errorRetries = 0;
  let bannerTimer = 0;

  // ---------------------------------------------------------------- connection

  function socketURL() {
    const override = params.get("socketURL");
    if (override) return override;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = location.pathname.replace(/\/index\.html$/, "").replace(/\/+$/, "");
    return `${scheme}//${location.host}${base}/ws`;
  }

  function open() {
    serverListSeen = false;
    setConnection("connecting", "connecting…");
    socket = new WebSocket(socketURL());
    socket.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        showBanner(`The server sent a frame that is not JSON (${err.message}).`);
        return;
      }
      if (frame && typeof frame === "object") handle(frame);
    };
    socket.onclose = () => {
      world.joined = false;
      setConnection("disconnected", `disconnected, retrying in ${Math.round(reconnectDelay / 1000)} s`);
      setTimeout(open, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, LIMITS.reconnectMaxMs);
    };
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function requestServer(server) {
    send({ type: "connect", data: { server } });
  }

  function handle(frame) {
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    switch (frame.type) {
      case "server-list": return onServerList(data);
      case "server-join": return onServerJoin(data);
      case "presence": return world.joined && onPresence(data);
      case "message": return world.joined && onMessage(data);
      case "error": return onError(data);
      default: return undefined; // unknown types are ignored, as the d-zone client does
    }
  }

  // ---------------------------------------------------------------- protocol events

  function onServerList(entries) {
    if (serverListSeen) return; // one per socket; a second would mean a second connect
    serverListSeen = true;
    els.picker.replaceChildren();
    for (const [key, entry] of Object.entries(entries)) {
      if (!entry || typeof entry.id !== "string") continue;
      const option = document.createElement("option");
      option.value = entry.id;
      option.dataset.key = key;
      option.textContent = String(entry.name ?? entry.id) + (entry.passworded ? " (login required)" : "");
      option.disabled = Boolean(entry.passworded); // this page has no Discord login
      els.picker.append(option);
    }
    els.picker.disabled = els.picker.options.length === 0;
    setConnection("connected", "connected");
    requestServer(world.server ?? wanted ?? null);
  }

  function onServerJoin(data) {
    const request = data.request && typeof data.request === "object" ? data.request : {};
    world.server = typeof request.server === "string" ? request.server : null;
    world.serverName = typeof data.serverName === "string" ? data.serverName : world.server ?? "";
    world.joined = true;
    wanted = world.server;
    reconnectDelay = 1000;
    errorRetries = 0;
    for (const actor of world.actors.values()) actor.item.remove();
    world.actors.clear();
    els.chat.replaceChildren();
    const users = data.users && typeof data.users === "object" ? Object.values(data.users) : [];
    const nameOf = (user) => String((user && (user.username ?? user.user?.username)) || "");
    users.sort((a, b) => byName(nameOf(a), nameOf(b)));
    world.size = Math.max(12, Math.ceil(Math.sqrt(users.length) * 1.7));
    for (const user of users) {
      const uid = user && (user.uid ?? user.user?.id);
      const name = user && (user.username ?? user.user?.username);
      if (uid == null || !name) continue; // the d-zone client skips entries without a username
      addActor(String(uid), String(name), user.status, user.roleColor, false);
    }
    els.serverName.textContent = world.serverName;
    document.title = `${world.serverName} · d-zone live`;
    if (world.server !== null) {
      els.picker.value = world.server;
      params.set("s", world.server);
      history.replaceState(null, "", `?${params}`);
    }
    document.body.dataset.server = world.server ?? "";
    setConnection("joined", "live");
    refreshCounts();
  }

  function onPresence(data) {
    if (data.uid == null) return;
    const uid = String(data.uid);
    const actor = world.actors.get(uid);
    if (data.delete) {
      if (actor) removeActor(actor);
    } else if (actor) {
      const status = normalStatus(data.status);
      if (status !== actor.status) {
        actor.status = status;
        actor.pulse = 1;
        actor.item.dataset.status = status;
      }
      if (data.roleColor !== undefined) actor.colour = normalColour(data.roleColor);
    } else {
      addActor(uid, typeof data.username === "string" ? data.username : "", data.status, data.roleColor, true);
    }
    refreshCounts();
  }

  function onMessage(data) {
    const actor = world.actors.get(String(data.uid));
    if (!actor || typeof data.message !== "string" || !data.message) return;
    const text = data.message.replace(/[\r\n]+/g, " ").slice(0, LIMITS.textChars);
    actor.bubbles.push(text);
    if (actor.bubbles.length > LIMITS.bubbleQueue) actor.bubbles.shift();
    actor.pulse = 1;
    const line = document.createElement("li");
    line.dataset.uid = actor.uid;
    line.dataset.channel = data.channel == null ? "" : String(data.channel);
    const author = document.createElement("span");
    author.className = "author";
    author.style.color = actor.colour;
    author.textContent = actor.name || actor.uid;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.append(author, body);
    els.chat.prepend(line);
    while (els.chat.childElementCount > LIMITS.chatLog) els.chat.lastElementChild.remove();
  }

  function onError(data) {
    showBanner(typeof data.message === "string" ? data.message : "The server reported an error.");
    // Like the d-zone client: with no world yet, fall back to the default server, but only a few times.
    if (!world.joined && errorRetries < LIMITS.errorRetries) {
      errorRetries += 1;
      wanted = null;
      setTimeout(() => requestServer("default"), 1000 * errorRetries);
    } else if (world.server !== null) {
      els.picker.value = world.server; // a failed switch leaves us where we were
    }
  }

  els.picker.addEventListener("change", () => requestServer(els.picker.value));

  // ---------------------------------------------------------------- members

  function normalStatus(status) {
    return STATUSES.includes(status) ? status : "online";
  }

  function normalColour(colour) {
    return typeof colour === "string" && /^#[0-9a-fA-F]{6}$/.test(colour) ? colour.toLowerCase() : DEFAULT_COLOUR;
  }

  function addActor(uid, name, status, colour, arriving) {
    const existing = world.actors.get(uid);
    if (existing) removeActor(existing);
    const x = Math.random() * world.size;
    const y = Math.random() * world.size;
    const item = document.createElement("li");
    item.dataset.uid = uid;
    item.textContent = name;
    const actor = {
      uid, name, item, x, y, tx: x, ty: y,
      status: normalStatus(status), colour: normalColour(colour),
      nextMove: performance.now() + Math.random() * 4000,
      pulse: arriving ? 1 : 0, bubbles: [], bubble: null, phase: Math.random() * Math.PI * 2,
    };
    item.dataset.status = actor.status;
    // the snapshot arrives sorted; a newcomer is slotted in by name
    const next = arriving ? [...els.members.children].find((li) => byName(li.textContent, name) > 0) : null;
    els.members.insertBefore(item, next ?? null);
    world.actors.set(uid, actor);
    return actor;
  }

  function byName(a, b) {
    return a.localeCompare(b, undefined, { sensitivity: "base" });
  }

  function removeActor(actor) {
    actor.item.remove();
    world.actors.delete(actor.uid);
  }

  function refreshCounts() {
    const counts = { online: 0, idle: 0, dnd: 0, offline: 0 };
    for (const actor of world.actors.values()) counts[actor.status] += 1;
    els.count.textContent = String(world.actors.size);
    for (const status of STATUSES) els.counts[status].textContent = String(counts[status]);
  }

  // ---------------------------------------------------------------- page chrome

  function setConnection(state, text) {
    document.body.dataset.state = state;
    els.connection.textContent = text;
  }

  function showBanner(text) {
    els.banner.textContent = text;
    els.banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { els.banner.hidden = true; }, 6000);
  }

  // ---------------------------------------------------------------- drawing

  const ctx = els.canvas.getContext("2d");
  const view = { width: 0, height: 0, tile: 24, originX: 0, originY: 0, mouseX: -1, mouseY: -1 };

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    const rect = els.canvas.getBoundingClientRect();
    view.width = rect.width;
    view.height = rect.height;
    els.canvas.width = Math.round(rect.width * ratio);
    els.canvas.height = Math.round(rect.height * ratio);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  function layout() {
    // The yard is a diamond `size` tiles wide; fit it with a margin.
    view.tile = Math.max(8, Math.min(72, (view.width * 0.92) / world.size, (view.height * 0.85 * 2) / world.size));
    view.originX = view.width / 2;
    view.originY = (view.height - (world.size * view.tile) / 2) / 2 + 20;
  }

  function project(x, y) {
    return [view.originX + ((x - y) * view.tile) / 2, view.originY + ((x + y) * view.tile) / 4];
  }

  function shade(hex, amount) {
    const n = parseInt(hex.slice(1), 16);
    const mix = (c) => Math.round(amount >= 0 ? c + (255 - c) * amount : c * (1 + amount));
    return `rgb(${mix(n >> 16)},${mix((n >> 8) & 255)},${mix(n & 255)})`;
  }

  function drawFloor() {
    const n = world.size;
    const corners = [project(0, 0), project(n, 0), project(n, n), project(0, n)];
    ctx.fillStyle = "#1b1e26";
    ctx.strokeStyle = "#262a35";
    ctx.beginPath();
    corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.fill();
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i <= n; i += 2) {
      ctx.moveTo(...project(i, 0)); ctx.lineTo(...project(i, n));
      ctx.moveTo(...project(0, i)); ctx.lineTo(...project(n, i));
    }
    ctx.stroke();
  }

  function step(actor, now, dt) {
    if (actor.status === "online") {
      if (now > actor.nextMove) {
        const clamp = (v) => Math.min(world.size - 0.5, Math.max(0.5, v));
        actor.tx = clamp(actor.x + (Math.random() - 0.5) * 6);
        actor.ty = clamp(actor.y + (Math.random() - 0.5) * 6);
        actor.nextMove = now + 2000 + Math.random() * 5000;
      }
      const dx = actor.tx - actor.x;
      const dy = actor.ty - actor.y;
      const dist = Math.hypot(dx, dy);
      const move = Math.min(dist, 1.6 * dt);
      if (dist > 0.01) {
        actor.x += (dx / dist) * move;
        actor.y += (dy / dist) * move;
      }
      actor.moving = dist > 0.05;
    } else {
      actor.moving = false;
    }
    actor.pulse = Math.max(0, actor.pulse - dt);
    if (actor.bubble && now > actor.bubble.until) actor.bubble = null;
    if (!actor.bubble && actor.bubbles.length) {
      const text = actor.bubbles.shift();
      actor.bubble = { text, born: now, until: now + Math.min(12000, 3500 + text.length * 45) };
    }
  }

  function drawActor(actor, now) {
    const [sx, groundY] = project(actor.x, actor.y);
    const s = view.tile * 0.28;
    const hop = actor.moving ? Math.abs(Math.sin(now / 120 + actor.phase)) * s * 0.5 : 0;
    const sy = groundY - hop;
    const h = s * 1.1;
    const offline = actor.status === "offline";
    const body = offline ? OFFLINE_BODY : actor.colour;
    ctx.globalAlpha = offline ? 0.45 : actor.status === "online" ? 1 : 0.7;
    // shadow
    ctx.fillStyle = "rgba(0,0,0,0.35)";
    ctx.beginPath();
    ctx.ellipse(sx, groundY + s * 0.5, s * 0.9, s * 0.4, 0, 0, Math.PI * 2);
    ctx.fill();
    // left, right and top faces of a cube
    const face = (points, colour) => {
      ctx.fillStyle = colour;
      ctx.beginPath();
      points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.fill();
    };
    face([[sx - s, sy - h], [sx, sy - h + s / 2], [sx, sy + s / 2], [sx - s, sy]], shade(body, -0.1));
    face([[sx, sy - h + s / 2], [sx + s, sy - h], [sx + s, sy], [sx, sy + s / 2]], shade(body, -0.35));
    face([[sx, sy - h - s / 2], [sx + s, sy - h], [sx, sy - h + s / 2], [sx - s, sy - h]], shade(body, 0.25));
    // status badge
    ctx.globalAlpha = 1;
    const r = Math.max(2.5, s * 0.32);
    const bx = sx + s * 0.85;
    const by = sy - h - s * 0.55;
    ctx.fillStyle = "#14161c";
    ctx.beginPath(); ctx.arc(bx, by, r + 1.5, 0, Math.PI * 2); ctx.fill();
    ctx.fillStyle = STATUS_COLOURS[actor.status];
    ctx.beginPath(); ctx.arc(bx, by, r, 0, Math.PI * 2); ctx.fill();
    if (actor.status === "idle") { // crescent
      ctx.fillStyle = "#14161c";
      ctx.beginPath(); ctx.arc(bx - r * 0.45, by - r * 0.45, r * 0.7, 0, Math.PI * 2); ctx.fill();
    } else if (actor.status === "dnd") { // bar
      ctx.fillStyle = "#14161c";
      ctx.fillRect(bx - r * 0.6, by - r * 0.18, r * 1.2, r * 0.36);
    }
    // a ring when something just happened to this member
    if (actor.pulse > 0) {
      ctx.strokeStyle = STATUS_COLOURS[actor.status];
      ctx.globalAlpha = actor.pulse;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.ellipse(sx, groundY + s * 0.5, s * (2.6 - actor.pulse * 1.4), s * (1.2 - actor.pulse * 0.6), 0, 0,
        Math.PI * 2);
      ctx.stroke();
      ctx.globalAlpha = 1;
    }
    actor.screen = [sx, sy - h];
  }

  function wrap(text, width) {
    const lines = [];
    let line = "";
    for (const word of text.split(" ")) {
      const candidate = line ? `${line} ${word}` : word;
      if (ctx.measureText(candidate).width <= width || !line) {
        line = candidate;
      } else {
        lines.push(line);
        line = word;
      }
    }
    if (line) lines.push(line);
    if (lines.length > 4) return [...lines.slice(0, 3), `${lines[3]}…`];
    return lines;
  }

  function drawLabel(actor, text, colour, y) {
    ctx.font = "600 12px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8;
    ctx.fillStyle = "rgba(10,11,15,0.8)";
    ctx.fillRect(actor.screen[0] - w / 2, y - 14, w, 16);
    ctx.fillStyle = colour;
    ctx.textAlign = "center";
    ctx.fillText(text, actor.screen[0], y - 2);
  }

  function drawBubble(actor, now) {
    const { text, born, until } = actor.bubble;
    const alpha = Math.min(1, (now - born) / 200, (until - now) / 800);
    ctx.globalAlpha = Math.max(0, alpha);
    ctx.font = "13px system-ui, sans-serif";
    const lines = wrap(text, 200);
    const width = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 16;
    const height = lines.length * 16 + 10;
    const [ax, ay] = actor.screen;
    const x = Math.min(Math.max(4, ax - width / 2), view.width - width - 4);
    const y = ay - 14 - height;
    ctx.fillStyle = "#f4f5f8";
    ctx.beginPath();
    ctx.roundRect(x, y, width, height, 6);
    ctx.moveTo(ax - 5, y + height); ctx.lineTo(ax, y + height + 7); ctx.lineTo(ax + 5, y + height);
    ctx.fill();
    ctx.fillStyle = "#1d2029";
    ctx.textAlign = "left";
    lines.forEach((l, i) => ctx.fillText(l, x + 8, y + 18 + i * 16));
    drawLabel(actor, actor.name || actor.uid, actor.colour, y - 2);
    ctx.globalAlpha = 1;
  }

  let last = performance.now();
  function frame(now) {
    const dt = Math.min(0.1, (now - last) / 1000);
    last = now;
    if (els.canvas.clientWidth !== view.width || els.canvas.clientHeight !== view.height) resize();
    layout();
    ctx.clearRect(0, 0, view.width, view.height);
    drawFloor();
    const actors = [...world.actors.values()];
    for (const actor of actors) step(actor, now, dt);
    actors.sort((a, b) => a.x + a.y - (b.x + b.y));
    for (const actor of actors) drawActor(actor, now);
    let hovered = null;
    let best = view.tile * 0.6;
    for (const actor of actors) {
      const d = Math.hypot(actor.screen[0] - view.mouseX, actor.screen[1] - view.mouseY);
      if (d < best) { best = d; hovered = actor; }
      if (actor.bubble) drawBubble(actor, now);
    }
    if (hovered && !hovered.bubble) {
      drawLabel(hovered, `${hovered.name || hovered.uid} · ${hovered.status}`, hovered.colour, hovered.screen[1] - 6);
    }
    if (!world.joined && world.actors.size === 0) {
      ctx.fillStyle = "#8b90a0";
      ctx.font = "16px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("waiting for the server…", view.width / 2, view.height / 2);
    }
    requestAnimationFrame(frame);
  }

  els.canvas.addEventListener("mousemove", (event) => {
    const rect = els.canvas.getBoundingClientRect();
    view.mouseX = event.clientX - rect.left;
    view.mouseY = event.clientY - rect.top;
  });
  els.canvas.addEventListener("mouseleave", () => { view.mouseX = -1; view.mouseY = -1; });

  resize();
  requestAnimationFrame(frame);
  open();
})();
