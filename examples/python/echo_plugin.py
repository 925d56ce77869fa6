#!/usr/bin/env python3
"""An appfw plugin in plain Python, written from docs/PROTOCOL.md alone.

Serves two request topics:
  $ECHO_TOPIC (default "py.echo")  replies with the request payload unchanged
  py.upper                         replies with the UTF-8 payload upper-cased

The appfw host starts it (it inherits the socket named by APPFW_PLUGIN_FD). Requirements: the
`protobuf` package and bindings generated from the schema, from the repository root:
  python3 -m grpc_tools.protoc -I crates/appfw-proto/proto --python_out=OUT appfw/v1/appfw.proto
with OUT on PYTHONPATH.
"""
import os
import platform
import select
import signal
import socket
import struct
import sys
import time

GEN_CMD = ("python3 -m grpc_tools.protoc -I crates/appfw-proto/proto --python_out=OUT "
           "appfw/v1/appfw.proto")
try:
    from google.protobuf.message import DecodeError
    from appfw.v1 import appfw_pb2 as pb
except ImportError as err:
    sys.stderr.write(f"py-echo: cannot import the appfw protobuf bindings ({err}); run "
                     f"`pip install -r requirements.txt` and `{GEN_CMD}`, then put OUT on PYTHONPATH\n")
    sys.exit(2)

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024       # until WELCOME tells us the real limit
CAPABILITIES = ["pubsub", "request", "log", "health"]
PREFIX = struct.Struct(">IH")                  # u32 frame_len, u16 header_len (big-endian)


class ProtocolViolation(Exception):
    """The host sent bytes that are not a valid frame: close the connection and exit 1."""


class ReplyError(Exception):
    """Raised by a handler to answer with Header.error = {kind, code, message}."""

    def __init__(self, kind, code, message):
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


class Connection:
    """Frames over the inherited socket; keeps our seq counter and the ack of the host's frames."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.seq = 0                        # seq of the last frame we sent (first frame is 1)
        self.ack = 0                        # highest seq received from the host
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE

    def send(self, frame_type, payload=b"", **header_fields):
        """Sends one frame; `payload` is raw bytes or a protobuf message (control frames)."""
        if not isinstance(payload, (bytes, bytearray)):
            payload = payload.SerializeToString()
        self.seq += 1
        header = pb.Header(type=frame_type, seq=self.seq, ack=self.ack, **header_fields)
        head = header.SerializeToString()
        self.sock.sendall(PREFIX.pack(2 + len(head) + len(payload), len(head)) + head + payload)

    def next_frame(self):
        """Returns (Header, payload) if a whole frame is buffered, else None."""
        if len(self.buf) < 4:
            return None
        (frame_len,) = struct.unpack_from(">I", self.buf)
        if frame_len > self.max_frame_size:        # checked before buffering the frame
            raise ProtocolViolation(f"frame of {frame_len} bytes exceeds the maximum "
                                    f"frame size of {self.max_frame_size} bytes")
        if frame_len < 2:
            raise ProtocolViolation(f"malformed frame: frame_len {frame_len} < 2")
        if len(self.buf) < 4 + frame_len:
            return None
        (header_len,) = struct.unpack_from(">H", self.buf, 4)
        if header_len > frame_len - 2:
            raise ProtocolViolation(f"malformed frame: header_len {header_len} > {frame_len - 2}")
        body = bytes(self.buf[6:4 + frame_len])
        del self.buf[:4 + frame_len]
        try:
            header = pb.Header.FromString(body[:header_len])
        except DecodeError as err:
            raise ProtocolViolation(f"malformed frame header: {err}") from err
        self.ack = max(self.ack, header.seq)
        return header, body[header_len:]


def events(conn, wake):
    """Yields ("frame", header, payload) and ("signal", signum); returns on EOF.

    This is the plugin's single event loop: frames are read and dispatched here, and signals
    arrive through the wakeup socket, so PONGs always come from the loop that does the work.
    """
    while True:
        frame = conn.next_frame()
        if frame is not None:
            yield ("frame",) + frame
            continue
        readable, _, _ = select.select([conn.sock, wake], [], [])
        if wake in readable:
            for signum in wake.recv(64):           # set_wakeup_fd writes one byte per signal
                yield ("signal", signum)
        if conn.sock in readable:
            data = conn.sock.recv(65536)
            if not data:                           # the host closed the connection
                if conn.buf:
                    sys.stderr.write("py-echo: connection closed in the middle of a frame\n")
                return
            conn.buf += data


def topic_matches(pattern, topic):
    """Subscription pattern matching: '*' = one token, '>' (last) = one or more tokens."""
    pat, tok = pattern.split("."), topic.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return len(tok) > i
        if i >= len(tok) or p not in ("*", tok[i]):
            return False
    return len(pat) == len(tok)


def upper(payload):
    try:
        return payload.decode("utf-8").upper().encode("utf-8")
    except UnicodeDecodeError as err:
        raise ReplyError(pb.ERROR_KIND_PERMANENT, "bad_request", f"payload is not UTF-8: {err}")


def serve(conn, handlers, h, payload):
    """Answers one REQUEST with exactly one REPLY carrying the same request_id."""
    try:
        if h.deadline_unix_ms and time.time_ns() // 1_000_000 >= h.deadline_unix_ms:
            raise ReplyError(pb.ERROR_KIND_TEMPORARY, "deadline_exceeded",
                             "deadline passed before the request was served")
        handler = next((fn for pat, fn in handlers.items() if topic_matches(pat, h.topic)), None)
        if handler is None:
            raise ReplyError(pb.ERROR_KIND_PERMANENT, "bad_request", f"no handler for {h.topic!r}")
        result = handler(payload)
    except ReplyError as err:
        error = pb.Error(kind=err.kind, code=err.code, message=err.message)
    except Exception as err:  # noqa: BLE001 - a failing handler must not kill the plugin
        error = pb.Error(kind=pb.ERROR_KIND_CRITICAL, code="handler_panicked",
                         message=f"{type(err).__name__}: {err}")
    else:
        conn.send(pb.FRAME_TYPE_REPLY, result, request_id=h.request_id,
                  content_type=h.content_type)
        return
    conn.send(pb.FRAME_TYPE_REPLY, request_id=h.request_id, error=error)


def open_host_socket():
    """The connected Unix stream socket inherited from the host (APPFW_PLUGIN_FD)."""
    value = os.environ.pop("APPFW_PLUGIN_FD", None)
    if value is None:
        sys.exit("py-echo: APPFW_PLUGIN_FD is not set: this program must be started by an appfw host")
    try:
        fd = int(value)
        if fd < 3:
            raise ValueError("descriptors 0-2 are stdio")
        sock = socket.socket(fileno=fd)            # family and type are read from the descriptor
    except (ValueError, OSError) as err:
        sys.exit(f"py-echo: APPFW_PLUGIN_FD={value} is not an inherited socket: {err}")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sys.exit(f"py-echo: APPFW_PLUGIN_FD={value} is not a Unix stream socket")
    sock.set_inheritable(False)                    # close-on-exec: children must not keep it open
    return sock


def run(conn, wake):
    loop = events(conn, wake)
    conn.send(pb.FRAME_TYPE_HELLO, pb.Hello(
        min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION,
        plugin_name=os.environ.get("APPFW_PLUGIN_NAME", ""),
        sdk=f"python/{platform.python_version()}", capabilities=CAPABILITIES))

    # Handshake: the first frame we care about is WELCOME, REFUSE or PROTOCOL_ERROR.
    for event in loop:
        if event[0] == "signal":
            return 0                               # no GOODBYE before WELCOME
        _, h, payload = event
        if h.type == pb.FRAME_TYPE_WELCOME:
            welcome = pb.Welcome.FromString(payload)
            break
        if h.type == pb.FRAME_TYPE_REFUSE:
            sys.stderr.write(f"py-echo: host refused the handshake: "
                             f"{pb.Refuse.FromString(payload).reason}\n")
            return 3
        if h.type == pb.FRAME_TYPE_PROTOCOL_ERROR:
            e = pb.ProtocolError.FromString(payload)
            sys.stderr.write(f"py-echo: protocol error from host: {e.code}: {e.message}\n")
            return 1
    else:
        sys.stderr.write("py-echo: the host closed the connection before WELCOME\n")
        return 1
    conn.max_frame_size = welcome.max_frame_size or DEFAULT_MAX_FRAME_SIZE
    caps = set(welcome.capabilities)
    if "request" not in caps:
        sys.stderr.write("py-echo: the host did not grant capability 'request'\n")
        return 1

    # Subscribe to the request topics; subscription ids double as REPLY correlation ids.
    handlers = {os.environ.get("ECHO_TOPIC", "py.echo"): lambda p: p, "py.upper": upper}
    pending = {}
    for sub_id, topic in enumerate(handlers, start=1):
        conn.send(pb.FRAME_TYPE_SUBSCRIBE, pb.Subscribe(kind=pb.SUBSCRIPTION_KIND_REQUESTS),
                  topic=topic, request_id=sub_id)
        pending[sub_id] = topic

    for event in loop:
        if event[0] == "signal":
            conn.send(pb.FRAME_TYPE_GOODBYE, pb.Goodbye(reason=f"signal {event[1]}"))
            return 0
        _, h, payload = event
        if h.type == pb.FRAME_TYPE_PING:
            conn.send(pb.FRAME_TYPE_PONG, request_id=h.request_id)
        elif h.type == pb.FRAME_TYPE_REQUEST:
            serve(conn, handlers, h, payload)
        elif h.type == pb.FRAME_TYPE_REPLY and h.request_id in pending:
            topic = pending.pop(h.request_id)
            if h.HasField("error"):
                sys.stderr.write(f"py-echo: subscription to {topic!r} refused: "
                                 f"{h.error.code}: {h.error.message}\n")
                return 1
            if not pending:                        # all subscriptions confirmed
                print("py-echo: ready", flush=True)
                if "health" in caps:
                    conn.send(pb.FRAME_TYPE_HEALTH, pb.HealthReport(
                        status=pb.HEALTH_STATUS_HEALTHY, message="serving"))
                if "log" in caps:
                    conn.send(pb.FRAME_TYPE_LOG, pb.LogRecord(
                        level=pb.LEVEL_INFO, message="python echo plugin ready",
                        target="echo_plugin", time_unix_nanos=time.time_ns(),
                        fields={"topics": ",".join(handlers)}))
        elif h.type == pb.FRAME_TYPE_SHUTDOWN:
            # Handlers run inline, so nothing is in flight: say goodbye and exit.
            reason = pb.Shutdown.FromString(payload).reason or "shutdown requested"
            conn.send(pb.FRAME_TYPE_GOODBYE, pb.Goodbye(reason=f"shutdown: {reason}"))
            return 0
        elif h.type == pb.FRAME_TYPE_PROTOCOL_ERROR:
            e = pb.ProtocolError.FromString(payload)
            sys.stderr.write(f"py-echo: protocol error from host: {e.code}: {e.message}\n")
            return 1
        # Anything else (PONG, unknown frame types, ...) is skipped, as the protocol requires.
    return 0                                       # EOF: the host closed the connection


def main():
    conn = Connection(open_host_socket())
    # Signals only write a byte to `wake_w`; the event loop reads it from `wake`.
    wake, wake_w = socket.socketpair()
    wake.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        return run(conn, wake)
    except (ProtocolViolation, DecodeError) as err:
        sys.stderr.write(f"py-echo: bad frame from host: {err}\n")
        return 1
    except (BrokenPipeError, ConnectionResetError):
        return 0                                   # the host went away while we were writing
    finally:
        conn.sock.close()


if __name__ == "__main__":
    sys.exit(main())
