// The canonical Socket.IO room chat, scaled out through Redis like Huddle: clients join a
// room and every chat message goes to everyone in it (io.to(room).emit).
// PORT and REDIS_URL come from scripts/bench.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const pub = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
const sub = pub.duplicate();

Promise.all([pub.connect(), sub.connect()]).then(() => {
  const http = createServer();
  const io = new Server(http, { adapter: createAdapter(pub, sub), transports: ["websocket"] });
  io.on("connection", (socket) => {
    socket.on("join", (room) => {
      socket.join(room);
      socket.emit("joined", room);
    });
    socket.on("chat", (message) => io.to(message.room).emit("chat", message.body));
  });
  http.listen(port, "127.0.0.1", () => console.log(`socket.io listening on ${port}`));
});
