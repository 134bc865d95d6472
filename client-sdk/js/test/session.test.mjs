// Unit tests of the built SDK (dist/) against a scripted fake cluster: a fake
// coordinator (fetch) and fake ws-nodes (WebSocket). The browser tests
// (tests/js_sdk.rs) run the same SDK against real servers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PresenceClient, PresenceError, backoffDelay } from "../dist/index.js";

/** A fake cluster: nodes by URL, one owner for every user, scripted answers. */
class FakeCluster {
  constructor() {
    this.owner = "ws://a/socket";
    this.sockets = [];
    this.expired = new Set();
    this.routes = 0;
    this.connections = 0;
    const cluster = this;
    this.WebSocket = class {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        cluster.sockets.push(this);
        setTimeout(() => {
          if (cluster.refuse?.(url)) return this.drop(1006);
          this.readyState = 1;
          this.onopen?.();
        }, 0);
      }
      send(data) {
        const m = JSON.parse(data);
        this.sent.push(m);
        cluster.received(this, m);
      }
      close(code = 1000) {
        this.drop(code);
      }
      /** The server says `m`. */
      say(m) {
        setTimeout(() => this.onmessage?.({ data: JSON.stringify(m) }), 0);
      }
      /** The socket ends with `code`. */
      drop(code, reason = "") {
        if (this.readyState === 3) return;
        if (this.readyState === 1) cluster.connections -= this.welcomed ? 1 : 0;
        this.readyState = 3;
        setTimeout(() => this.onclose?.({ code, reason }), 0);
      }
    };
    this.fetch = async (url, init) => {
      const u = new URL(url);
      if (u.pathname === "/route") {
        this.routes += 1;
        (this.reported ??= []).push(u.searchParams.get("unreachable"));
        const userId = u.searchParams.get("userId");
        return json(200, { userId, vnode: 1, nodeId: this.owner, url: this.owner, epoch: 1 });
      }
      if (u.pathname === "/presence") {
        const { userIds } = JSON.parse(init.body);
        if (init.headers.authorization !== "Bearer key") return json(401, { error: "no key", code: "unauthorized" });
        return json(200, { users: userIds.map((userId) => ({ userId, online: false, connections: 0, lastSeen: null, availability: "available" })) });
      }
      return json(404, { error: "no such path", code: "not_found" });
    };
  }

  received(sock, m) {
    if (m.type === "auth") {
      if (this.expired.has(m.token)) {
        sock.say({ type: "error", code: "token_expired", message: "token has expired" });
        return sock.drop(4001);
      }
      if (sock.url.split("?")[0] !== this.owner) {
        sock.say({ type: "redirect", url: this.owner, epoch: 1 });
        return sock.drop(4010);
      }
      sock.welcomed = true;
      this.connections += 1;
      sock.say({ type: "welcome", userId: "alice", connectionId: `c${this.sockets.length}`, nodeId: this.owner, epoch: 1, connections: this.connections });
    }
  }

  /** Live welcomed sockets. */
  live() {
    return this.sockets.filter((s) => s.welcomed && s.readyState === 1);
  }
}

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

/** The next event of `type` matching `pred`, within 3 s. */
function next(session, type, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} in time`)), 3000);
    const off = session.on(type, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

const until = async (what, check) => {
  const deadline = Date.now() + 3000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

function setup(options = {}) {
  const c = new FakeCluster();
  const client = new PresenceClient("http://coord", { fetch: c.fetch, WebSocket: c.WebSocket, apiKey: options.apiKey });
  return { c, client };
}

test("backoff grows, is capped and jittered", () => {
  const b = { initialMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(b, 1, () => 0), 50);
  assert.equal(backoffDelay(b, 1, () => 1), 100);
  assert.equal(backoffDelay(b, 3, () => 1), 400);
  assert.equal(backoffDelay(b, 30, () => 1), 1000, "capped");
  assert.equal(backoffDelay(b, 30, () => 0), 500, "at least half the cap");
});

test("route, batch routes and the keyed server API", async () => {
  const { client } = setup({ apiKey: "key" });
  assert.equal((await client.route("alice")).url, "ws://a/socket");
  const ids = Array.from({ length: 1200 }, (_, i) => `u${i}`);
  const { client: keyless } = setup();
  await assert.rejects(keyless.status(["bob"]), (e) => e instanceof PresenceError && e.code === "unauthorized" && e.status === 401);
  const users = await client.status(ids);
  assert.equal(users.length, 1200);
  assert.equal(users[1199].userId, "u1199");
});

test("connects, authenticates with the device, and types count and status events", async () => {
  const { c, client } = setup();
  const s = client.connect("alice", { token: "t1", device: "web" });
  const welcome = await next(s, "welcome");
  assert.equal(welcome.nodeId, "ws://a/socket");
  const auth = c.sockets[0].sent[0];
  assert.deepEqual(auth, { type: "auth", token: "t1", device: "web" });
  s.subscribe(["bob", "carol"]);
  await until("the subscribe", () => c.sockets[0].sent.some((m) => m.type === "subscribe"));
  assert.deepEqual(c.sockets[0].sent.find((m) => m.type === "subscribe").userIds, ["bob", "carol"]);
  const count = next(s, "count");
  c.sockets[0].say({ type: "count", userId: "alice", connections: 2 });
  assert.equal((await count).connections, 2);
  const statuses = [];
  s.on("status", (e) => statuses.push(e));
  c.sockets[0].say({
    type: "statuses",
    statuses: [
      { type: "status", userId: "bob", online: true, connections: 1, lastSeen: 5, availability: "busy", statusText: "Lunch", devices: { web: 1 } },
      { type: "status", userId: "carol", online: false, connections: 0, lastSeen: null, availability: "available" },
    ],
  });
  await until("both statuses", () => statuses.length === 2);
  assert.equal(statuses[0].availability, "busy");
  assert.deepEqual(statuses[0].devices, { web: 1 });
  await s.close();
});

test("a redirect is followed through the coordinator", async () => {
  const { c, client } = setup();
  const s = client.connect("alice", { token: "t", url: "ws://b/socket" });
  await next(s, "welcome");
  assert.deepEqual(c.sockets.map((x) => x.url), ["ws://b/socket", "ws://a/socket"]);
  assert.ok(c.routes >= 1, "the coordinator was asked");
  await s.close();
});

test("a handoff connects to the new node before the old connection goes", async () => {
  const { c, client } = setup();
  const s = client.connect("alice", { token: "t" });
  await next(s, "welcome");
  c.owner = "ws://b/socket";
  let bothAtOnce = false;
  const watch = setInterval(() => (bothAtOnce ||= c.live().length === 2), 1);
  const moved = next(s, "welcome");
  c.sockets[0].say({ type: "reconnect", url: "ws://b/socket", epoch: 2, reason: "rebalance" });
  assert.equal((await moved).nodeId, "ws://b/socket");
  await until("the old connection closed", () => c.sockets[0].readyState === 3);
  clearInterval(watch);
  assert.ok(bothAtOnce, "make before break: both connections were up at once");
  await s.close();
});

test("after a drop it reconnects, routes again and re-subscribes, still idle", async () => {
  const { c, client } = setup();
  const s = client.connect("alice", { token: "t", backoff: { initialMs: 10, maxMs: 20 } });
  await next(s, "welcome");
  s.subscribe(["bob"]);
  s.setIdle(true);
  const dropped = next(s, "reconnecting", (e) => e.reason === "dropped");
  const back = next(s, "welcome");
  c.sockets[0].drop(1006);
  await dropped;
  await back;
  const second = c.sockets[1].sent;
  assert.deepEqual(second.find((m) => m.type === "subscribe").userIds, ["bob"]);
  // The lost node was named to the coordinator, once; the first route named none.
  assert.deepEqual(c.reported, [null, "ws://a/socket"]);
  assert.deepEqual(second.find((m) => m.type === "activity"), { type: "activity", idle: true });
  await s.close();
});

test("a node whose socket never opens is named on the next route", async () => {
  const { c, client } = setup();
  let refusals = 1;
  c.refuse = () => refusals-- > 0;
  const s = client.connect("alice", { token: "t", backoff: { initialMs: 10, maxMs: 20 } });
  await next(s, "welcome");
  assert.deepEqual(c.reported, [null, "ws://a/socket"]);
  await s.close();
});

test("an expired token is replaced through the callback", async () => {
  const { c, client } = setup();
  c.expired.add("old");
  const asked = [];
  const s = client.connect("alice", {
    token: (expired) => {
      asked.push(expired);
      return expired ? "new" : "old";
    },
  });
  await next(s, "welcome");
  assert.deepEqual(asked, [false, true]);
  assert.equal(c.live()[0].sent[0].token, "new");
  await s.close();
});

test("a token is refreshed over the live connection before it runs out", async () => {
  // The node says the token runs out in 100 ms: a fresh one goes at ~80 ms.
  const { c: c2, client: client2 } = setup();
  const orig = c2.received.bind(c2);
  c2.received = (so, m) => {
    if (m.type === "auth" && !so.welcomed) {
      so.welcomed = true;
      so.say({ type: "welcome", userId: "alice", connectionId: "c", nodeId: "n", epoch: 1, connections: 1, tokenExpiresAt: Date.now() + 100 });
      return;
    }
    orig(so, m);
  };
  let n = 0;
  const s2 = client2.connect("alice", { token: () => `tok-${n++}` });
  await next(s2, "welcome");
  await until("a fresh auth on the same socket", () => c2.sockets[0].sent.filter((m) => m.type === "auth").length === 2);
  assert.equal(c2.sockets.length, 1, "no reconnect");
  assert.equal(c2.sockets[0].sent[1].token, "tok-1");
  await s2.close();
});

test("it gives up only when told to", async () => {
  const { c, client } = setup();
  c.refuse = () => true;
  const s = client.connect("alice", { token: "t", backoff: { initialMs: 1, maxMs: 2, maxAttempts: 3 } });
  const gaveUp = await next(s, "error", (e) => e.code === "gave_up");
  assert.match(gaveUp.message, /after 3 attempts/);
  await next(s, "closed").catch(() => {});
});

test("a status set while disconnected is sent on the next connection", async () => {
  const { c, client } = setup();
  c.refuse = () => c.sockets.length < 2;
  const s = client.connect("alice", { token: "t", backoff: { initialMs: 10, maxMs: 10 } });
  s.setStatus("busy", "On a call", 60_000);
  await next(s, "welcome");
  assert.deepEqual(c.live()[0].sent.find((m) => m.type === "setStatus"), { type: "setStatus", availability: "busy", text: "On a call", expiresInMs: 60_000 });
  await s.close();
});
