"""An MCP agent for tests/agents.rs, built on the official MCP Python SDK.

It starts stdio MCP servers the way an agent does (the SDK's stdio_client:
command + args, pipes for stdin/stdout, a session of its own), and does on
each what the test asks, one JSON object per line on stdin:

  {"op": "start", "name": N, "command": C, "args": [...], "env": {...}, "cwd": D}
      initialize, list the tools, call create_entities and read_graph
      (@modelcontextprotocol/server-memory's tools); replies with the tools,
      the graph and the launcher's pid (the process the SDK started)
  {"op": "call", "name": N}           read_graph again; replies ok or error
  {"op": "kill_launcher", "name": N}  SIGKILL to the launcher only, as an
                                      agent that kills its direct child does;
                                      the server's stdin stays open
  {"op": "close", "name": N}          the SDK's shutdown: close stdin, wait,
                                      then SIGTERM/SIGKILL the process group
  {"op": "exit"}

Every reply is one JSON line on stdout: {"name": N, "op": OP, ...}. Errors
come back as {"error": TEXT}, never as a traceback on stdout.
"""

import json
import os
import signal
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

TIMEOUT = 60


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def children():
    """Our child pids, from /proc (the SDK does not expose its process)."""
    out = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def marked(pid, mark):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return mark.encode() in f.read().split(b"\0")
    except OSError:
        return False


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def serve_one(spec, commands, replies):
    """One server for its whole life: its own task, as cancel scopes must
    be left in the task that entered them."""
    name = spec["name"]
    # A mark in the server's environment tells its launcher from the others
    # started at the same time.
    mark = f"GOV_TEST_MCP_SERVER={name}"
    params = StdioServerParameters(
        command=spec["command"],
        args=spec["args"],
        env={**(spec.get("env") or {}), "GOV_TEST_MCP_SERVER": name},
        cwd=spec.get("cwd"),
    )
    before = children()
    try:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                with anyio.fail_after(TIMEOUT):
                    init = await session.initialize()
                    tools = await session.list_tools()
                    made = await session.call_tool(
                        "create_entities",
                        {
                            "entities": [
                                {
                                    "name": "gov",
                                    "entityType": "tool",
                                    "observations": [f"called through {name}"],
                                }
                            ]
                        },
                    )
                    graph = await session.call_tool("read_graph", {})
                # Once the server answers, its launcher is done exec'ing (an
                # environ read during an exec can come back empty).
                launcher = [p for p in sorted(children() - before) if marked(p, mark)]
                await replies.send(
                    {
                        "name": name,
                        "op": "start",
                        "server": init.server_info.name,
                        "tools": sorted(t.name for t in tools.tools),
                        "created_error": bool(made.is_error),
                        "graph": text_of(graph),
                        "launcher": launcher[0] if len(launcher) == 1 else launcher,
                    }
                )
                async for cmd in commands:
                    op = cmd["op"]
                    if op == "call":
                        try:
                            with anyio.fail_after(5):
                                g = await session.call_tool("read_graph", {})
                            await replies.send(
                                {"name": name, "op": op, "ok": True, "graph": text_of(g)}
                            )
                        except Exception as e:  # a dead server, a timeout
                            await replies.send(
                                {"name": name, "op": op, "ok": False, "error": repr(e)}
                            )
                    elif op == "kill_launcher":
                        os.kill(launcher[0], signal.SIGKILL)
                        await replies.send({"name": name, "op": op, "pid": launcher[0]})
                    elif op == "close":
                        break
    except BaseException as e:  # noqa: BLE001 - reported, then the task ends
        if isinstance(e, anyio.get_cancelled_exc_class()):
            raise
        await replies.send({"name": name, "op": "start", "error": repr(e)})
        return
    await replies.send({"name": name, "op": "close", "closed": True})


async def main():
    servers = {}
    replies_in, replies_out = anyio.create_memory_object_stream(100)

    async def printer():
        async for r in replies_out:
            say(r)

    async with anyio.create_task_group() as tg:
        tg.start_soon(printer)
        # The servers' task group: leaving it waits for every server's shutdown.
        async with anyio.create_task_group() as stg:
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    break
                cmd = json.loads(line)
                op = cmd["op"]
                if op == "exit":
                    break
                if op == "start":
                    send, recv = anyio.create_memory_object_stream(10)
                    servers[cmd["name"]] = send
                    stg.start_soon(serve_one, cmd, recv, replies_in)
                elif cmd.get("name") in servers:
                    await servers[cmd["name"]].send(cmd)
                    if op == "close":
                        servers.pop(cmd["name"]).close()
                else:
                    say({"op": op, "error": f"no server {cmd.get('name')!r}"})
            for send in servers.values():
                send.close()
        replies_in.close()


if __name__ == "__main__":
    anyio.run(main)
