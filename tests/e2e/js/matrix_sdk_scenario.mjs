// A normal Matrix session with a stock matrix-js-sdk (37.5.0, what Element is built on), started as
// an app starts it: `startClient()`, nothing answered by hand. Run by tests/e2e/test_matrix_js_sdk.py
// against our stack, and by bench/matrix_sdk_synapse.py against Synapse, so the scenario itself
// is proved against a reference server.
//
//   node matrix_sdk_scenario.mjs <homeserver URL> [step ...]
//
// Each step is a named async function below; every result goes to stdout as one line
// `@@ {"step": ..., "ok": true, ...}` (the SDK's own logging goes to stderr). A failing step
// prints `"ok": false` with the error and ends the run with exit code 1. Steps run in the order
// of STEPS; the command line can choose a subset (steps that need an earlier one's state run it).
// To add a step (encryption, media: see the issue), add a function to STEPS and its name where
// the Python test lists what it expects.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel(process.env.SDK_LOG_LEVEL || "warn");
// The SDK logs through console; keep stdout for our result lines only.
for (const level of ["log", "info", "warn", "error", "debug", "trace"]) {
  console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const baseUrl = process.argv[2];
const wanted = process.argv.slice(3);
const PASSWORD = "correct horse battery staple";
const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 20000);

function report(step, fields) {
  process.stdout.write("@@ " + JSON.stringify({ step, ...fields }) + "\n");
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Resolves when `predicate()` is true, re-checking on each `event` of `emitter`; rejects after TIMEOUT_MS. */
function until(emitter, event, predicate, what) {
  return new Promise((resolve, reject) => {
    const check = () => {
      let value;
      try {
        value = predicate();
      } catch (error) {
        cleanup();
        reject(error);
        return;
      }
      if (value) {
        cleanup();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for ${what}`));
    }, TIMEOUT_MS);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(event, check);
    };
    emitter.on(event, check);
    check();
  });
}

async function register(prefix) {
  const username = `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const response = await fetch(`${baseUrl}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: PASSWORD, auth: { type: "m.login.dummy" } }),
  });
  const body = await response.json();
  assert(response.status === 200, `register ${username}: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

async function startedClient(session) {
  const client = sdk.createClient({
    baseUrl,
    accessToken: session.access_token,
    userId: session.user_id,
    deviceId: session.device_id,
  });
  const states = [];
  client.on(sdk.ClientEvent.Sync, (state) => states.push(state));
  await client.startClient({ initialSyncLimit: 20 });
  await until(client, sdk.ClientEvent.Sync, () => states.includes("PREPARED"), `${session.user_id} PREPARED`);
  return client;
}

// Shared between steps.
const ctx = {};

const STEPS = {
  /** Two users, each with a stock client that reaches PREPARED on its own. */
  async prepared() {
    const [alice, bob] = await Promise.all([register("alice"), register("bob")]);
    ctx.aliceSession = alice;
    ctx.bobSession = bob;
    ctx.alice = await startedClient(alice);
    ctx.bob = await startedClient(bob);
    return { alice: alice.user_id, bob: bob.user_id };
  },

  /** The push rules the SDK fetched at start-up hold the spec's server-default rules. */
  async push_rules_read() {
    const rules = ctx.alice.pushRules;
    assert(rules && rules.global, "the client has no push rules");
    const ids = (kind) => (rules.global[kind] || []).filter((r) => r.default).map((r) => r.rule_id);
    return { override: ids("override"), content: ids("content"), underride: ids("underride") };
  },

  /** Alice opens a direct chat with Bob; Bob sees the invite through sync and joins. */
  async direct_chat() {
    const bobId = ctx.bobSession.user_id;
    const { room_id: roomId } = await ctx.alice.createRoom({ is_direct: true, invite: [bobId], preset: "trusted_private_chat" });
    ctx.roomId = roomId;
    await until(ctx.bob, sdk.ClientEvent.Room, () => ctx.bob.getRoom(roomId)?.getMyMembership() === "invite", "the invite");
    await ctx.bob.joinRoom(roomId);
    const aliceRoom = () => ctx.alice.getRoom(roomId);
    await until(ctx.alice, sdk.RoomStateEvent.Members, () => aliceRoom()?.getMember(bobId)?.membership === "join", "Bob's join");
    return { room_id: roomId };
  },

  /** A message from Alice arrives at Bob in his live timeline. */
  async message() {
    const { event_id: eventId } = await ctx.alice.sendTextMessage(ctx.roomId, "hello Bob");
    ctx.firstEventId = eventId;
    const room = ctx.bob.getRoom(ctx.roomId);
    await until(ctx.bob, sdk.RoomEvent.Timeline, () => room.findEventById(eventId), "the message at Bob");
    return { body: room.findEventById(eventId).getContent().body };
  },

  /** Alice edits her message; Bob's SDK shows the new text on the original event. */
  async edit() {
    const original = ctx.firstEventId;
    const { event_id: editId } = await ctx.alice.sendEvent(ctx.roomId, "m.room.message", {
      msgtype: "m.text",
      body: "* hello Bob!",
      "m.new_content": { msgtype: "m.text", body: "hello Bob!" },
      "m.relates_to": { rel_type: "m.replace", event_id: original },
    });
    const room = ctx.bob.getRoom(ctx.roomId);
    // The SDK aggregates the edit asynchronously after the timeline event, and says so on the original.
    const target = room.findEventById(original);
    const shown = () => target.getContent().body === "hello Bob!";
    await until(target, sdk.MatrixEventEvent.Replaced, shown, "the edit applied at Bob");
    return { edit_id: editId, body: room.findEventById(original).getContent().body };
  },

  /** Bob replies to Alice's message; Alice's client fetches the parent by id, and the edits through /relations. */
  async reply() {
    const parentId = ctx.firstEventId;
    const { event_id: replyId } = await ctx.bob.sendMessage(ctx.roomId, {
      msgtype: "m.text",
      body: "> hello Bob!\n\nhi Alice",
      "m.relates_to": { "m.in_reply_to": { event_id: parentId } },
    });
    const room = ctx.alice.getRoom(ctx.roomId);
    await until(ctx.alice, sdk.RoomEvent.Timeline, () => room.findEventById(replyId), "the reply at Alice");
    const replyTo = room.findEventById(replyId).replyEventId;
    const parent = await ctx.alice.fetchRoomEvent(ctx.roomId, replyTo);
    const edits = await ctx.alice.relations(ctx.roomId, parentId, "m.replace", "m.room.message");
    return {
      parent_id: parent.event_id,
      parent_body: parent.content.body,
      edited_by: parent.unsigned?.["m.relations"]?.["m.replace"]?.event_id ?? null,
      edits: edits.events.map((e) => e.getId()),
    };
  },

  /** Alice changes her display name; Bob sees the new name on her member in the room. */
  async display_name() {
    await ctx.alice.setDisplayName("Alice Wang");
    const member = () => ctx.bob.getRoom(ctx.roomId).getMember(ctx.aliceSession.user_id);
    await until(ctx.bob, sdk.RoomMemberEvent.Name, () => member()?.name === "Alice Wang", "Alice's new name at Bob");
    return { name: member().name };
  },

  /** Alice types; Bob sees it, then sees her stop. */
  async typing() {
    const member = () => ctx.bob.getRoom(ctx.roomId).getMember(ctx.aliceSession.user_id);
    await ctx.alice.sendTyping(ctx.roomId, true, 20000);
    await until(ctx.bob, sdk.RoomMemberEvent.Typing, () => member()?.typing, "Alice typing");
    await ctx.alice.sendTyping(ctx.roomId, false, 0);
    await until(ctx.bob, sdk.RoomMemberEvent.Typing, () => member() && !member().typing, "Alice stopped typing");
    return { seen: true };
  },

  /** Bob marks the room read (m.fully_read + m.read); Alice sees his receipt, Bob his own marker. */
  async read_marker() {
    const bobRoom = ctx.bob.getRoom(ctx.roomId);
    const last = bobRoom.getLiveTimeline().getEvents().at(-1);
    await ctx.bob.setRoomReadMarkers(ctx.roomId, last.getId(), last);
    const marker = () => bobRoom.getAccountData("m.fully_read")?.getContent().event_id === last.getId();
    await until(ctx.bob, sdk.RoomEvent.AccountData, marker, "Bob's m.fully_read in his account data");
    const aliceRoom = ctx.alice.getRoom(ctx.roomId);
    const bobId = ctx.bobSession.user_id;
    const receipt = () => aliceRoom.getEventReadUpTo(bobId) === last.getId();
    await until(ctx.alice, sdk.RoomEvent.Receipt, receipt, "Bob's read receipt at Alice");
    return { read_up_to: last.getId(), unread: bobRoom.getUnreadNotificationCount() };
  },

  /** Alice mutes the room with a room push rule; it comes back to her client as m.push_rules account data. */
  async push_rule_changed() {
    await ctx.alice.addPushRule("global", "room", ctx.roomId, { actions: [] });
    const has = () => (ctx.alice.pushRules?.global?.room || []).some((r) => r.rule_id === ctx.roomId);
    await until(ctx.alice, sdk.ClientEvent.AccountData, has, "the new room rule in m.push_rules");
    await ctx.alice.setPushRuleEnabled("global", "override", ".m.rule.suppress_notices", false);
    const disabled = () => ctx.alice.pushRules.global.override.find((r) => r.rule_id === ".m.rule.suppress_notices")?.enabled === false;
    await until(ctx.alice, sdk.ClientEvent.AccountData, disabled, "the disabled default rule");
    return { room_rules: ctx.alice.pushRules.global.room.map((r) => r.rule_id) };
  },
};

const order = Object.keys(STEPS);
const selected = wanted.length ? order.filter((name) => wanted.includes(name) || name === "prepared") : order;
let failed = false;
for (const name of selected) {
  try {
    const result = await STEPS[name]();
    report(name, { ok: true, ...(result || {}) });
  } catch (error) {
    report(name, { ok: false, error: String(error?.stack || error) });
    failed = true;
    break;
  }
}
for (const client of [ctx.alice, ctx.bob]) client?.stopClient();
process.exit(failed ? 1 : 0);
