// The npm zulip-js package, unmodified, as a Zulip client uses it: register, poll, send, read the history,
// react, poll again. tests/test_zulip_api_b.py runs it against the real server (ZULIP_SITE, ZULIP_EMAIL,
// ZULIP_API_KEY) and checks what it prints: one JSON object of every answer and event it got.
"use strict";

const zulip = require("zulip-js");

// A poll is answered by the first events, or by a heartbeat: poll until the event wanted comes.
async function nextEvent(client, queue, type) {
  for (;;) {
    const answer = await client.events.retrieve({ queue_id: queue.id, last_event_id: queue.last });
    must("events", answer);
    for (const event of answer.events) {
      queue.last = event.id;
      if (event.type === type) return event;
    }
  }
}

// An answer that is not a success ends the script at once, saying which call it was.
function must(call, answer) {
  if (answer.result !== "success") throw new Error(`${call}: ${JSON.stringify(answer)}`);
  return answer;
}

async function main() {
  const client = await zulip({
    username: process.env.ZULIP_EMAIL, apiKey: process.env.ZULIP_API_KEY, realm: process.env.ZULIP_SITE,
  });
  const seen = {};
  seen.register = must("register", await client.queues.register({ event_types: ["message", "reaction"] }));
  const queue = { id: seen.register.queue_id, last: -1 };
  seen.sent = must("send", await client.messages.send({
    to: "Denmark", type: "stream", topic: "node", content: "from **node**",
  }));
  seen.message_event = await nextEvent(client, queue, "message");
  seen.history = must("history", await client.messages.retrieve({
    anchor: "newest", num_before: 10, num_after: 0,
    narrow: [{ operator: "topic", operand: "node" }],
  }));
  seen.reacted = must("reaction", await client.reactions.add({ message_id: seen.sent.id, emoji_name: "octopus" }));
  seen.reaction_event = await nextEvent(client, queue, "reaction");
  process.stdout.write(JSON.stringify(seen));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
