// Sends log events to a Fluent Forward server with the @fluent-org/logger package.
// Usage: node forward_node.js '<json options>'
//   {"port": 24224, "mode": "PackedForward", "tag": "shop", "label": "web", "count": 10,
//    "prefix": "node", "ack": true, "sharedKey": "k", "username": "u", "password": "p",
//    "ca": "/path/ca.pem", "eventTime": true}
// Exits 0 once every event was sent (and acked when "ack" is set), 1 otherwise.
const fs = require("fs");
const { FluentClient } = require("@fluent-org/logger");

async function main() {
  const opts = JSON.parse(process.argv[2]);
  const socket = { host: "127.0.0.1", port: opts.port, timeout: 20000 };
  if (opts.ca) {
    socket.tls = { ca: fs.readFileSync(opts.ca), servername: "localhost" };
  }
  const clientOpts = {
    eventMode: opts.mode,
    socket,
    milliseconds: !!opts.eventTime,
    flushInterval: opts.flushInterval || 0,
    disconnect: { waitForPending: true, socketDisconnectDelay: 100 },
  };
  if (opts.ack) {
    clientOpts.ack = { ackTimeout: 20000 };
  }
  if (opts.sharedKey) {
    clientOpts.security = { clientHostname: "node-client", sharedKey: opts.sharedKey };
    if (opts.username) {
      clientOpts.security.username = opts.username;
      clientOpts.security.password = opts.password;
    }
  }
  const client = new FluentClient(opts.tag, clientOpts);
  const sends = [];
  for (let i = 0; i < opts.count; i++) {
    sends.push(client.emit(opts.label, { log: `${opts.prefix} ${i}`, stream: "stdout", job: "node-job" }));
  }
  await Promise.all(sends);
  await client.shutdown();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error("forward client failed:", err);
    process.exit(1);
  },
);
