"""The Kamailio test rig: scratch MariaDB, a real Kamailio 5.6, sipp UAS and UAC, on loopback.

KamailioDB       a scratch MariaDB database with the Kamailio schema, created from the reference
                 create scripts in ../shared/reference/kamailio (standard, acc, dialog, htable),
                 plus the `db_extra` / `cdr_extra` columns the rig's kamailio.cfg writes.
KamailioProcess  `kamailio -DD -E` with a generated kamailio.cfg (acc with db_extra and
                 missed_calls, dialog + acc_cdrs, htable `ipban`, jsonrpcs over xhttp), its own
                 runtime dir and a small shared memory; `.rpc(method, *params)`.
Uas              one sipp UAS per behaviour (answer, hang up, busy, 5xx, ring until cancelled),
                 each on its own port; Kamailio routes to them by Request-URI user.
run_uac()        a sipp UAC run to completion with a scenario that honours Record-Route.

Everything is bound to 127.0.0.1 (127.0.0.2 for the banned caller) on free ports, and every
process started here is killed at teardown by the fixtures in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

REFERENCE = Path(__file__).resolve().parents[4] / "shared" / "reference"
KAMAILIO_SQL = ("standard", "acc", "dialog", "htable")
MODULES_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}

# Columns the rig's db_extra / cdr_extra write (as Kamailio's default config suggests adding).
ACC_EXTRA_COLUMNS = (
    ("src_user", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("src_domain", "VARCHAR(128) NOT NULL DEFAULT ''"),
    ("src_ip", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("dst_ouser", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("dst_user", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("dst_domain", "VARCHAR(128) NOT NULL DEFAULT ''"),
    ("ua", "VARCHAR(128) NOT NULL DEFAULT ''"),
)
CDR_EXTRA_COLUMNS = (
    ("callid", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("from_tag", "VARCHAR(128) NOT NULL DEFAULT ''"),
    ("src_user", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("dst_user", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("src_ip", "VARCHAR(64) NOT NULL DEFAULT ''"),
    ("sip_code", "VARCHAR(3) NOT NULL DEFAULT ''"),
)

BEHAVIOURS = ("answer", "hangup", "busy", "fail", "ring")
"""UAS behaviours; Kamailio routes a call to the UAS named by the first R-URI user digits."""


def kamailio_binary() -> str | None:
    """The kamailio binary: $CDRSTATS_KAMAILIO_BIN, else from PATH or /usr/sbin."""
    configured = os.environ.get("CDRSTATS_KAMAILIO_BIN")
    if configured:
        return configured if Path(configured).is_file() else None
    found = shutil.which("kamailio") or "/usr/sbin/kamailio"
    return found if Path(found).is_file() else None


def binaries_missing() -> str | None:
    """A reason string when kamailio or sipp is not installed, else None."""
    install = " (apt-get install kamailio kamailio-mysql-modules sip-tester)"
    if kamailio_binary() is None:
        return "the kamailio binary is not installed" + install
    if shutil.which("sipp") is None:
        return "sipp is not installed" + install
    if not Path(MODULES_DIR, "db_mysql.so").exists():
        return "kamailio-mysql-modules is not installed (db_mysql.so missing)"
    return None


def _kamailio() -> str:
    binary = kamailio_binary()
    assert binary is not None, binaries_missing()
    return binary


_PORTS = random.Random(os.getpid() ^ time.monotonic_ns())
_GIVEN: set[int] = set()


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP on `host`, below the kernel's ephemeral range.

    The kernel hands out ephemeral ports (32768-60999 here) to every outgoing connection and
    DNS query on the machine; a port picked there may be taken before sipp or Kamailio binds
    it. Below that range only explicit binds compete. `kind` is kept for the callers.
    """
    for _ in range(200):
        port = _PORTS.randrange(20000, 32000)
        if port in _GIVEN:
            continue
        try:
            for sock_kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, sock_kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port")


# --- MariaDB ---------------------------------------------------------------------------------


def sql_statements(text: str) -> list[str]:
    """The statements of a Kamailio *-create.sql script (one per `;` at a line end)."""
    out, current = [], []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    return out


_OURS = re.compile(r"^cdrstats_(?:bench_)?kam_[a-z]*(\d+)(?:_\d+)?$")


def drop_stale_databases() -> list[str]:
    """Drop the scratch databases of test processes that died before their teardown."""
    conn = pymysql.connect(**MYSQL, autocommit=True)
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'cdrstats%'")
            for (name,) in cur.fetchall():
                match = _OURS.match(name)
                if match is None or int(match[1]) == os.getpid():
                    continue
                try:
                    os.kill(int(match[1]), 0)
                    continue  # its process still runs
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                dropped.append(name)
    finally:
        conn.close()
    return dropped


class KamailioDB:
    """A scratch MariaDB database with the Kamailio schema; dropped by `.drop()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        conn = pymysql.connect(**MYSQL, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"USE `{name}`")
            for part in KAMAILIO_SQL:
                path = REFERENCE / "kamailio" / f"5.6.3_mysql_{part}-create.sql"
                for stmt in sql_statements(path.read_text()):
                    cur.execute(stmt)
            for table in ("acc", "missed_calls"):
                for col, decl in ACC_EXTRA_COLUMNS:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
            for col, decl in CDR_EXTRA_COLUMNS:
                cur.execute(f"ALTER TABLE acc_cdrs ADD COLUMN {col} {decl}")
        conn.close()

    @property
    def url(self) -> str:
        """Kamailio's db_url and the plugin's `url` (same syntax)."""
        return f"mysql://root@127.0.0.1:3306/{self.name}"

    def connect(self) -> Any:
        return pymysql.connect(**MYSQL, database=self.name, autocommit=True)

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        conn = self.connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def execute(self, sql: str, args: Any = None) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
        finally:
            conn.close()

    def drop(self) -> None:
        conn = pymysql.connect(**MYSQL, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        conn.close()


# --- Kamailio --------------------------------------------------------------------------------

CFG = """#!KAMAILIO
# Generated by kamailio_testkit.py for the CDR-Stats kamailio plugin tests.
#!define FLT_ACC 1
#!define FLT_ACCMISSED 2
#!define FLT_ACCFAILED 3
#!define DBURL "{db_url}"

debug=2
log_stderror=yes
memdbg=5
memlog=5
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{sip_port}
listen=tcp:127.0.0.1:{http_port}
tcp_accept_no_cl=yes
http_reply_parse=yes

mpath="{modules}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "db_mysql.so"
loadmodule "dialog.so"
loadmodule "acc.so"
loadmodule "htable.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"

modparam("rr", "append_fromtag", 1)
modparam("jsonrpcs", "transport", 1)
modparam("htable", "htable", "ipban=>size=8;autoexpire=300;")
modparam("dialog", "enable_stats", 1)
modparam("dialog", "default_timeout", 3600)

modparam("acc", "early_media", 0)
modparam("acc", "report_ack", 0)
modparam("acc", "report_cancels", 0)
modparam("acc", "detect_direction", 0)
modparam("acc", "db_flag", FLT_ACC)
modparam("acc", "db_missed_flag", FLT_ACCMISSED)
modparam("acc", "failed_transaction_flag", FLT_ACCFAILED)
modparam("acc", "db_url", DBURL)
modparam("acc", "db_extra",
    "src_user=$fU;src_domain=$fd;src_ip=$si;dst_ouser=$tU;dst_user=$rU;dst_domain=$rd;ua=$ua")
modparam("acc", "cdr_enable", 1)
modparam("acc", "cdrs_table", "acc_cdrs")
modparam("acc", "cdr_extra",
    "callid=$dlg_var(cid);from_tag=$dlg_var(ftag);src_user=$dlg_var(src_user);dst_user=$dlg_var(dst_user);src_ip=$dlg_var(src_ip);sip_code=$dlg_var(code)")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    # CDR-Stats native blocking: sources in htable ipban get 403.
    if ($sht(ipban=>$si) != $null) {{
        xlog("L_NOTICE", "banned source $si rejected ($rm $ci)\\n");
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("BYE")) {{
                setflag(FLT_ACC);
                setflag(FLT_ACCFAILED);
            }}
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (!is_method("INVITE")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    record_route();
    dlg_manage();
    $dlg_var(cid) = $ci;
    $dlg_var(ftag) = $ft;
    $dlg_var(src_user) = $fU;
    $dlg_var(dst_user) = $rU;
    $dlg_var(src_ip) = $si;
    setflag(FLT_ACC);
    setflag(FLT_ACCMISSED);
    setflag(FLT_ACCFAILED);
{routes}
    else {{
        sl_send_reply("404", "No such test UAS");
        exit;
    }}
    t_on_reply("REPLY");
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

onreply_route[REPLY] {{
    if (is_method("INVITE") && $rs >= 200) {{
        $dlg_var(code) = $rs;
    }}
}}

event_route[xhttp:request] {{
    if ($Rp != {http_port}) {{
        xhttp_reply("403", "Forbidden", "text/plain", "wrong port");
        exit;
    }}
    if ($hu =~ "^/RPC") {{
        jsonrpc_dispatch();
    }} else {{
        xhttp_reply("404", "Not Found", "text/plain", "use /RPC");
    }}
}}
"""


def kamailio_cfg(db_url: str, sip_port: int, http_port: int, uas_ports: dict[str, int]) -> str:
    routes = []
    for i, (behaviour, port) in enumerate(uas_ports.items()):
        word = "if" if i == 0 else "else if"
        routes.append(
            f'    {word} ($rU =~ "^{behaviour}") {{\n        $du = "sip:127.0.0.1:{port}";\n    }}'
        )
    return CFG.format(
        db_url=db_url,
        sip_port=sip_port,
        http_port=http_port,
        modules=MODULES_DIR,
        routes="\n".join(routes),
    )


class KamailioProcess:
    """A real Kamailio in the foreground (-DD -E) with its own runtime dir."""

    def __init__(self, workdir: Path, db: KamailioDB, uas_ports: dict[str, int]) -> None:
        self.workdir = workdir
        self.runtime = workdir / "run"
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.cfg = workdir / "kamailio.cfg"
        self.cfg.write_text(kamailio_cfg(db.url, self.sip_port, self.http_port, uas_ports))
        self.log_path = workdir / "kamailio.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/RPC"

    def check_cfg(self) -> None:
        done = subprocess.run(
            [_kamailio(), "-c", "-f", str(self.cfg)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise AssertionError(f"kamailio -c failed:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    _kamailio(),
                    "-DD",
                    "-E",
                    "-m", "32",
                    "-M", "8",
                    "-f", str(self.cfg),
                    "-Y", str(self.runtime),
                    "-P", str(self.runtime / "kamailio.pid"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"kamailio exited ({self.process.returncode}):\n{self.tail()}")
            try:
                self.rpc("core.version")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"kamailio RPC not up in {timeout} s:\n{self.tail()}"
                    ) from None
                time.sleep(0.1)

    def rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})
        req = urllib.request.Request(
            self.rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            doc = json.loads(resp.read())
        if "error" in doc:
            raise RuntimeError(f"{method}: {doc['error']}")
        return doc.get("result")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        kill_group(self.process)
        self.process = None


def kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group of a process we started, then SIGKILL what is left of it."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


# --- sipp scenarios --------------------------------------------------------------------------

_RESP_HEADERS = """      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]"""

_SDP = """      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""


def _send(text: str, retrans: bool = False) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}>\n    <![CDATA[\n{text}\n    ]]>\n  </send>\n"


def _scenario(name: str, body: str) -> str:
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
    return f'{head}<scenario name="{name}">\n{body}</scenario>\n'


def _uas_ringing() -> str:
    return _send(
        f"""      SIP/2.0 180 Ringing
{_RESP_HEADERS}
      [last_Record-Route:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
"""
    )


def _uas_answer() -> str:
    return _send(
        f"""      SIP/2.0 200 OK
{_RESP_HEADERS}
      [last_Record-Route:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

{_SDP}
""",
        retrans=True,
    )


def _reply_plain(code: str, reason: str) -> str:
    return _send(
        f"""      SIP/2.0 {code} {reason}
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
"""
    )


def uas_scenario(behaviour: str, hold_ms: int = 1000) -> str:
    """The sipp UAS scenario of one behaviour (see BEHAVIOURS)."""
    recv_invite = '  <recv request="INVITE" rrs="true" crlf="true"/>\n'
    if behaviour == "answer":  # the caller hangs up
        body = (
            recv_invite
            + _uas_ringing()
            + _uas_answer()
            + '  <recv request="ACK" optional="true" crlf="true"/>\n'
            + '  <recv request="BYE"/>\n'
            + _reply_plain("200", "OK")
            + '  <timewait milliseconds="2000"/>\n'
        )
    elif behaviour == "hangup":  # the callee hangs up after hold_ms
        body = (
            '  <recv request="INVITE" rrs="true" crlf="true">\n'
            '    <action><ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>'
            "</action>\n  </recv>\n"
            + _uas_ringing()
            + _uas_answer()
            + '  <recv request="ACK" crlf="true"/>\n'
            + f'  <pause milliseconds="{hold_ms}"/>\n'
            + _send(
                """      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: <sip:[service]@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 1 BYE
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
""",
                retrans=True,
            )
            + '  <recv response="200"/>\n'
            + '  <timewait milliseconds="2000"/>\n'
        )
    elif behaviour in ("busy", "fail"):
        code, reason = ("486", "Busy Here") if behaviour == "busy" else ("500", "Server Error")
        body = (
            recv_invite
            + _send(
                f"""      SIP/2.0 {code} {reason}
{_RESP_HEADERS}
      Content-Length: 0
"""
            )
            + '  <recv request="ACK" crlf="true"/>\n'
            + '  <timewait milliseconds="2000"/>\n'
        )
    elif behaviour == "ring":  # rings until the caller cancels
        body = (
            recv_invite
            + _uas_ringing()
            + '  <recv request="CANCEL">\n'
            + '    <action><ereg regexp="([0-9]+) CANCEL" search_in="hdr" header="CSeq:"'
            + ' assign_to="cseq_all,cseq"/></action>\n  </recv>\n'
            + _send(
                f"""      SIP/2.0 200 OK
{_RESP_HEADERS}
      Content-Length: 0
"""
            )
            + _send(
                """      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: [$cseq] INVITE
      Content-Length: 0
"""
            )
            + '  <recv request="ACK" crlf="true"/>\n'
            + '  <Reference variables="cseq_all"/>\n'
            + '  <timewait milliseconds="2000"/>\n'
        )
    else:
        raise ValueError(behaviour)
    return _scenario(f"cdrstats uas {behaviour}", body)


_UAC_FROM = (
    'From: "Caller [call_number]" <sip:[field0]@[local_ip]:[local_port]>'
    ";tag=[pid]SIPpTag00[call_number]"
)

_UAC_INVITE = (
    """      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      {uac_from}
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:[field0]@[local_ip]:[local_port]
      Max-Forwards: 70
      User-Agent: cdrstats-sipp
      Content-Type: application/sdp
      Content-Length: [len]

""".replace("{uac_from}", _UAC_FROM)
    + _SDP
    + "\n"
)

_UAC_FROM_TO = f"""      {_UAC_FROM}
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]"""


def _uac_in_dialog(method: str, cseq: int) -> str:
    return f"""      {method} [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
{_UAC_FROM_TO}
      CSeq: {cseq} {method}
      Contact: sip:[field0]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
"""


def _uac_non2xx_ack() -> str:
    return _send(
        """      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
"""
        + _UAC_FROM_TO
        + """
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
"""
    )


def uac_scenario(kind: str, hold_ms: int = 1000, cancel_after_ms: int = 500) -> str:
    """A sipp UAC scenario that honours Record-Route (rrs, [routes], [next_url]).

    kind: `hangup` (answered, the caller hangs up after hold_ms), `wait_bye` (answered, the
    callee hangs up), `reject:<code>` (expects that final response and ACKs it), `cancel`
    (cancels after cancel_after_ms of ringing).
    """
    body = _send(_UAC_INVITE, retrans=True) + '  <recv response="100" optional="true"/>\n'
    if kind in ("hangup", "wait_bye"):
        body += (
            '  <recv response="180" optional="true"/>\n'
            '  <recv response="200" rrs="true" rtd="true"/>\n' + _send(_uac_in_dialog("ACK", 1))
        )
        if kind == "hangup":
            body += (
                f'  <pause milliseconds="{hold_ms}"/>\n'
                + _send(_uac_in_dialog("BYE", 2), retrans=True)
                + '  <recv response="200" crlf="true"/>\n'
            )
        else:
            body += '  <recv request="BYE"/>\n' + _reply_plain("200", "OK")
    elif kind.startswith("reject:"):
        code = kind.split(":", 1)[1]
        body += (
            '  <recv response="180" optional="true"/>\n'
            f'  <recv response="{code}" rtd="true"/>\n' + _uac_non2xx_ack()
        )
    elif kind == "cancel":
        body += (
            '  <recv response="180"/>\n'
            f'  <pause milliseconds="{cancel_after_ms}"/>\n'
            + _send(
                """      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      {uac_from}
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
""".replace("{uac_from}", _UAC_FROM),
                retrans=True,
            )
            + '  <recv response="200"/>\n'
            + '  <recv response="487"/>\n'
            + _uac_non2xx_ack()
        )
    else:
        raise ValueError(kind)
    body += '  <timewait milliseconds="500"/>\n'
    return _scenario(f"cdrstats uac {kind}", body)


# --- sipp processes --------------------------------------------------------------------------


def _sipp_base(scenario: Path, ip: str, port: int) -> list[str]:
    return [
        "sipp",
        "-sf", str(scenario),
        "-i", ip,
        "-p", str(port),
        "-mp", str(free_port(socket.SOCK_DGRAM, ip)),
        "-cp", str(free_port(socket.SOCK_DGRAM, ip)),
        "-nostdin",
        "-max_socket", "100",
    ]  # fmt: skip


class Uas:
    """A sipp UAS of one behaviour, running until stopped."""

    def __init__(self, workdir: Path, behaviour: str, hold_ms: int = 1000) -> None:
        self.behaviour = behaviour
        self.port = free_port(socket.SOCK_DGRAM)
        self.scenario = workdir / f"uas_{behaviour}.xml"
        self.scenario.write_text(uas_scenario(behaviour, hold_ms))
        self.log_path = workdir / f"uas_{behaviour}.log"
        self.errors = workdir / f"uas_{behaviour}_errors.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *_sipp_base(self.scenario, "127.0.0.1", self.port),
                    "-trace_err",
                    "-error_file", str(self.errors),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        kill_group(self.process)
        self.process = None


@dataclass
class UacRun:
    returncode: int
    output: str
    errors: str


def run_uac(
    workdir: Path,
    kamailio: KamailioProcess,
    kind: str,
    callee: str,
    *,
    caller: str = "1001",
    calls: int = 1,
    rate: float = 10.0,
    limit: int = 100,
    ip: str = "127.0.0.1",
    hold_ms: int = 1000,
    timeout_s: int = 60,
    wait: bool = True,
) -> UacRun | UacProcess:
    """Run a sipp UAC of `kind` (see uac_scenario) for `calls` calls to `callee`.

    With wait=False a UacProcess is returned (sipp started in its own session) to wait on.
    """
    for attempt in range(3):
        tag = f"uac_{kind.replace(':', '')}_{callee}_{time.monotonic_ns()}"
        scenario = workdir / f"{tag}.xml"
        scenario.write_text(uac_scenario(kind, hold_ms=hold_ms))
        inf = workdir / f"{tag}.csv"
        inf.write_text(f"SEQUENTIAL\n{caller};\n")
        errors = workdir / f"{tag}_errors.log"
        cmd = [
            *_sipp_base(scenario, ip, free_port(socket.SOCK_DGRAM, ip)),
            "-inf", str(inf),
            "-s", callee,
            "-m", str(calls),
            "-r", str(rate),
            "-l", str(limit),
            "-timeout", f"{timeout_s}s",
            "-timeout_error",
            "-trace_err",
            "-error_file", str(errors),
            f"127.0.0.1:{kamailio.sip_port}",
        ]  # fmt: skip
        log_path = workdir / f"{tag}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:  # a port taken between picking and binding: pick others
            code = process.wait(0.3)
        except subprocess.TimeoutExpired:
            break
        text = log_path.read_text(errors="replace") + (
            errors.read_text(errors="replace") if errors.exists() else ""
        )
        if code == 0 or attempt == 2 or "bind" not in text.lower():
            break
    handle = UacProcess(process, log_path, errors, timeout_s + 15)
    RUNNING_UACS.append(handle)
    return handle.wait() if wait else handle


RUNNING_UACS: list[UacProcess] = []
"""Every UAC started; conftest kills what is left of them after each test."""


@dataclass
class UacProcess:
    """A running sipp UAC: `.wait()` gives its UacRun (killed if it outlives its timeout)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    errors_path: Path
    timeout_s: float

    done: bool = False

    def wait(self) -> UacRun:
        try:
            self.process.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        err = self.errors_path.read_text(errors="replace") if self.errors_path.exists() else ""
        out = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        code = self.process.returncode if self.process.returncode is not None else -9
        return UacRun(code, out[-3000:], err[-3000:])

    def kill(self) -> None:
        if not self.done:
            self.done = True
            kill_group(self.process)


@dataclass
class Rig:
    """What the session fixture `kamailio_rig` gives a test."""

    db: KamailioDB
    kamailio: KamailioProcess
    uas: dict[str, Uas]
    workdir: Path


# --- the real agent with a kamailio source ---------------------------------------------------


def kamailio_source_toml(
    db_url: str, *, name: str = "kamailio", rpc_url: str | None = None, **extra: Any
) -> str:
    """A `[[source]]` table for the kamailio plugin (extra keys as TOML scalars)."""
    lines = [
        "[[source]]",
        f'name = "{name}"',
        'plugin = "kamailio"',
        f'db_url = "{db_url}"',
        'timezone = "UTC"',
        "poll_s = 0.1",
        "gap_wait_s = 0.5",
    ]
    if rpc_url:
        lines.append(f'rpc_url = "{rpc_url}"')
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def spool_checkpoint(state_dir: Path, source: str = "kamailio") -> dict[str, Any] | None:
    """The checkpoint the agent committed for `source` (read-only), parsed."""
    import sqlite3

    path = state_dir / "spool.sqlite"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute("SELECT checkpoint FROM source WHERE name = ?", (source,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if not row or not row[0]:
        return None
    doc: dict[str, Any] = json.loads(row[0])
    return doc


def make_agent(
    workdir: Path, collector_url: str, source_toml: str, *, batch_max_age_s: float = 0.2
) -> Any:
    """A real `cdrstats-agent` (tests/fix_agent.AgentProcess) whose only source is `source_toml`."""
    from tests.fix_agent import AgentProcess

    agent = AgentProcess(workdir, workdir / "unused-csv", collector_url)
    agent.config_path.write_text(
        f'[agent]\nstate_dir = "{agent.state_dir}"\nlog_level = "debug"\nspool_sync = "normal"\n\n'
        f'[collector]\nurls = ["{collector_url}"]\nbatch_max_cdrs = 200\n'
        f"batch_max_age_s = {batch_max_age_s}\ntimeout_s = 10.0\nbackoff_max_s = 1.0\n\n"
        + source_toml
    )
    return agent


async def collect(
    source: Any, until: Any, limit_s: float = 30.0, checkpoint: str | None = None
) -> tuple[list[Any], list[Any], str | None]:
    """Drive `source.read(checkpoint)` until `until(cdrs)` holds: (cdrs, rejected, checkpoint)."""
    import asyncio

    cdrs: list[Any] = []
    rejected: list[Any] = []
    last = checkpoint

    async def run() -> None:
        nonlocal last
        gen = source.read(checkpoint)
        try:
            async for result in gen:
                cdrs.extend(result.cdrs)
                rejected.extend(result.rejected)
                last = result.checkpoint
                if until(cdrs):
                    return
        finally:
            await gen.aclose()

    try:
        await asyncio.wait_for(run(), limit_s)
    except TimeoutError:
        raise AssertionError(
            f"source did not produce the expected CDRs in {limit_s} s; got {len(cdrs)}:"
            f" {[(c.key, c.callee, c.disposition) for c in cdrs][-10:]}; rejected {rejected[-5:]}"
        ) from None
    return cdrs, rejected, last


async def eventually(condition: Any, limit_s: float, what: Any) -> None:
    """Await until `condition()` holds; fail after `limit_s` with `what()` as the message."""
    import asyncio

    deadline = time.monotonic() + limit_s
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s: {what()}")
        await asyncio.sleep(0.05)
