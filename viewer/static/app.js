// SPDX-License-Identifier: MPL-2.0
// The page: listens to /events (Server-Sent Events) and draws what it is told.
// Every text from a message goes through textContent, never innerHTML.
'use strict';

const PALETTE = ['#ff6b9a', '#4de3a0', '#ffb347', '#59c3ff', '#c58cff',
  '#e8f060', '#ff7f50', '#3ee6e6', '#f78fff', '#9dff6b'];
const HISTORY_SECONDS = 300;
const sources = new Map();
const pending = new Map();
let renderQueued = false;

function $(selector, root = document) { return root.querySelector(selector); }

function hash(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619); }
  return h >>> 0;
}
function colorOf(label) { return PALETTE[hash(label) % PALETTE.length]; }

function fmtAge(ms) {
  if (ms == null) return '–';
  if (ms < 1000) return (ms / 1000).toFixed(1) + ' s';
  if (ms < 60000) return Math.round(ms / 1000) + ' s';
  if (ms < 3600000) return Math.round(ms / 60000) + ' min';
  return Math.round(ms / 3600000) + ' h';
}
function fmtMs(ms) {
  if (ms == null || !isFinite(ms)) return '–';
  return (Math.abs(ms) < 10 ? ms.toFixed(1) : Math.round(ms)) + ' ms';
}
function fmtTime(ms) {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map(n => String(n).padStart(2, '0')).join(':');
}

function setConnection(c) {
  const pill = $('#broker-state');
  pill.dataset.state = c.state;
  pill.textContent = { connected: 'broker connected', disconnected: 'broker disconnected',
    connecting: 'connecting to broker' }[c.state] || c.state;
  let detail = '';
  if (c.state === 'disconnected') {
    detail = (c.detail || '') + (c.retry_in_ms != null ? ` — retrying in ${Math.round(c.retry_in_ms / 1000)} s` : '');
  }
  $('#broker-detail').textContent = detail;
}

function setTotals(messages, errors) {
  $('#totals').textContent = `${messages} messages`;
  $('#errors-total').textContent = String(errors);
}

// `replaces`: the same error again, shown as the newest line with its count.
function addError(line, replaces = line.repeat > 1) {
  const list = $('#errors');
  const li = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = fmtTime(line.time_ms);
  li.append(time);
  if (line.topic) {
    const topic = document.createElement('span');
    topic.className = 'topic';
    topic.textContent = line.topic;
    li.append(topic);
  }
  li.append(document.createTextNode(line.text));
  if (line.repeat > 1) {
    const repeat = document.createElement('span');
    repeat.className = 'repeat';
    repeat.textContent = `×${line.repeat}`;
    li.append(repeat);
  }
  if (replaces) list.firstElementChild?.remove();
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
}

function sourceCard(id, topic, sourceName) {
  let s = sources.get(id);
  if (s) return s;
  $('#waiting')?.remove();
  const el = $('#source-template').content.firstElementChild.cloneNode(true);
  el.dataset.sourceId = id;
  $('.topic', el).textContent = topic;
  $('.source-name', el).textContent = sourceName ?? '';
  $('#sources').append(el);
  s = { el, history: [], lastLocal: null };
  sources.set(id, s);
  new ResizeObserver(() => drawChart(s)).observe($('.chart', el));
  return s;
}

function onFrame(f) {
  const s = sourceCard(f.id, f.topic, f.source);
  s.lastLocal = performance.now();
  pending.set(f.id, f);
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      for (const frame of pending.values()) renderFrame(frame);
      pending.clear();
    });
  }
}

function renderFrame(f) {
  const s = sources.get(f.id);
  const el = s.el;
  $('.shape', el).textContent = f.shape;
  const pipeline = f.pipeline;
  $('.pipeline', el).textContent = pipeline ? ['pipeline', pipeline.name, pipeline.state,
    pipeline.avg_fps != null ? pipeline.avg_fps.toFixed(1) + ' fps' : null].filter(x => x != null).join(' ') : '';
  $('.frame-id', el).textContent = f.frame_id ?? '–';
  $('.object-count', el).textContent = String(f.objects.length);
  $('.message-count', el).textContent = String(f.count);
  $('#totals').textContent = `${f.messages_total} messages`;
  $('.age', el).textContent = fmtAge(0);
  if (f.latency_ms != null) {
    $('.latency', el).textContent = fmtMs(f.latency_ms);
    $('.latency', el).title = `from ${f.latency_from}`;
  }

  const frame = $('.frame', el);
  const img = $('.image', el);
  let [w, h] = f.resolution || [0, 0];
  let note = '';
  if (f.image) {
    img.src = 'data:image/jpeg;base64,' + f.image;
    frame.classList.remove('empty');
    if (!w || !h) {
      w = img.naturalWidth; h = img.naturalHeight;
      note = 'no resolution in the message: boxes placed on the image size';
    }
  } else {
    img.removeAttribute('src');
    frame.classList.add('empty');
    note = `no frame in the messages: boxes on an empty canvas of the published resolution, ${w}x${h}`;
  }
  if (!w || !h) {
    w = 1280; h = 720;
    note = 'no resolution in the message: boxes placed on a 1280x720 canvas';
  }
  frame.style.aspectRatio = `${w} / ${h}`;
  frame.dataset.width = w;
  frame.dataset.height = h;
  $('.frame-note', el).textContent = note;

  const boxes = $('.boxes', el);
  const nodes = [];
  for (const o of f.objects) {
    const box = document.createElement('div');
    box.className = 'box';
    const color = colorOf(o.label);
    box.style.borderColor = color;
    box.style.left = (100 * o.x / w) + '%';
    box.style.top = (100 * o.y / h) + '%';
    box.style.width = (100 * o.w / w) + '%';
    box.style.height = (100 * o.h / h) + '%';
    if (o.y / h < 0.06) box.classList.add('top');
    box.dataset.label = o.label;
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.style.background = color;
    const parts = [o.label];
    if (o.confidence != null) parts.push(Math.round(o.confidence * 100) + '%');
    if (o.track_id != null) parts.push('#' + o.track_id);
    for (const a of o.attributes) parts.push(a.label);
    tag.textContent = parts.join(' ');
    box.title = parts.join(' ') + o.attributes.map(a =>
      `\n${a.name}: ${a.label}` + (a.confidence != null ? ` ${Math.round(a.confidence * 100)}%` : '')).join('');
    box.append(tag);
    nodes.push(box);
  }
  boxes.replaceChildren(...nodes);

  // Classifications of the whole frame (a scene), above it.
  $('.frame-labels', el).replaceChildren(...(f.frame_labels || []).map(a => {
    const li = document.createElement('li');
    li.dataset.name = a.name;
    li.style.background = colorOf(a.label);
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = a.name;
    li.append(name, document.createTextNode(
      a.label + (a.confidence != null ? ` ${Math.round(a.confidence * 100)}%` : '')));
    return li;
  }));

  const rows = f.labels.map(l => {
    const tr = document.createElement('tr');
    tr.dataset.label = l.label;
    const name = document.createElement('td');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = colorOf(l.label);
    name.append(swatch, document.createTextNode(l.label));
    tr.append(name);
    for (const [cls, v] of [['now', l.now], ['detections', l.detections], ['tracks', l.tracks]]) {
      const td = document.createElement('td');
      td.className = cls;
      td.textContent = String(v);
      tr.append(td);
    }
    return tr;
  });
  $('.labels tbody', el).replaceChildren(...rows);
}

function onTick(t) {
  setConnection(t.connection);
  setTotals(t.messages_total, t.errors_total);
  for (const st of t.sources) {
    const s = sources.get(st.id);
    if (!s) continue;
    $('.rate', s.el).textContent = st.rate.toFixed(st.rate < 10 ? 1 : 0);
    if (st.latency_ms != null) {
      $('.latency', s.el).textContent = fmtMs(st.latency_ms);
      $('.latency', s.el).title = 'mean over the last 5 s';
    }
    if (st.age_ms != null) s.lastLocal = performance.now() - st.age_ms;
    s.history.push(st.point);
    if (s.history.length > HISTORY_SECONDS) s.history.shift();
    drawChart(s);
  }
}

function drawChart(s) {
  const canvas = $('.chart', s.el);
  const dpr = window.devicePixelRatio || 1;
  const cw = canvas.clientWidth, ch = canvas.clientHeight;
  if (!cw || !ch) return;
  canvas.width = Math.round(cw * dpr);
  canvas.height = Math.round(ch * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, cw, ch);
  const pad = { l: 28, r: 6, t: 8, b: 16 };
  const pw = cw - pad.l - pad.r, ph = ch - pad.t - pad.b;
  // Stacked areas, one band per label (in the table's order): the total is the height.
  const labels = new Set();
  let max = 1;
  for (const p of s.history) {
    if (!p.counts) continue;
    let total = 0;
    for (const [label, n] of Object.entries(p.counts)) { labels.add(label); total += n; }
    if (total > max) max = total;
  }
  const order = [...labels].sort();
  const yOf = n => pad.t + ph - (n / max) * ph;
  const xOf = i => pad.l + pw - ((s.history.length - 1 - i) / (HISTORY_SECONDS - 1)) * pw;
  // Runs of seconds with messages; seconds without any are gaps.
  const runs = [];
  s.history.forEach((p, i) => {
    if (!p.counts) return;
    const run = runs[runs.length - 1];
    if (run && run[run.length - 1] === i - 1) run.push(i); else runs.push([i]);
  });
  for (const run of runs) {
    const base = run.map(() => 0);
    for (const label of order) {
      const top = run.map((i, k) => base[k] + (s.history[i].counts[label] || 0));
      g.fillStyle = colorOf(label);
      g.beginPath();
      // A lone second is drawn one second wide.
      const xs = run.length === 1 ? [xOf(run[0]) - pw / HISTORY_SECONDS, xOf(run[0])] : run.map(xOf);
      const tops = run.length === 1 ? [top[0], top[0]] : top;
      const bases = run.length === 1 ? [base[0], base[0]] : base;
      xs.forEach((x, k) => (k ? g.lineTo(x, yOf(tops[k])) : g.moveTo(x, yOf(tops[k]))));
      for (let k = xs.length - 1; k >= 0; k--) g.lineTo(xs[k], yOf(bases[k]));
      g.closePath();
      g.fill();
      top.forEach((v, k) => { base[k] = v; });
    }
  }
  g.fillStyle = '#8d96a3';
  g.strokeStyle = 'rgba(17, 20, 24, 0.6)';
  g.lineWidth = 1;
  const step = Math.max(1, Math.ceil(max / 4));
  for (let n = 0; n <= max; n += step) {
    const y = Math.round(yOf(n)) + 0.5;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(cw - pad.r, y); g.stroke();
    g.fillText(String(n), 4, y + 4);
  }
  g.fillText('5 min ago', pad.l, ch - 3);
  g.fillText('now', cw - pad.r - 22, ch - 3);
}

function updateAges() {
  const now = performance.now();
  for (const s of sources.values()) {
    const dd = $('.age', s.el);
    if (s.lastLocal == null) continue;
    const age = now - s.lastLocal;
    dd.textContent = fmtAge(age);
    dd.classList.toggle('stale', age > 5000 && age <= 30000);
    dd.classList.toggle('dead', age > 30000);
  }
}

function onSnapshot(snap) {
  sources.clear();
  pending.clear();
  $('#sources').replaceChildren();
  $('#errors').replaceChildren();
  const v = snap.viewer;
  $('#subscription').textContent = `${v.topics.join(', ')} on ${v.broker}`;
  setConnection(snap.connection);
  setTotals(snap.messages_total, snap.errors_total);
  for (const line of snap.errors) addError(line, false);
  if (!snap.sources.length) {
    const p = document.createElement('p');
    p.id = 'waiting';
    p.textContent = 'Waiting for the first message…';
    $('#sources').append(p);
  }
  for (const src of snap.sources) {
    const s = sourceCard(src.id, src.topic, src.source);
    s.history = src.history.slice(-HISTORY_SECONDS);
  }
  for (const f of snap.frames) onFrame(f);
}

function connect() {
  const events = new EventSource('events');
  const json = handler => e => handler(JSON.parse(e.data));
  events.addEventListener('snapshot', json(onSnapshot));
  events.addEventListener('frame', json(onFrame));
  events.addEventListener('tick', json(onTick));
  events.addEventListener('errorline', json(line => addError(line)));
  events.addEventListener('connection', json(setConnection));
  // EventSource reconnects by itself; until then the page says the viewer is gone.
  events.onerror = () => {
    if (events.readyState !== EventSource.OPEN) {
      const pill = $('#broker-state');
      pill.dataset.state = 'offline';
      pill.textContent = 'viewer unreachable';
    }
  };
}

setInterval(updateAges, 250);
connect();
