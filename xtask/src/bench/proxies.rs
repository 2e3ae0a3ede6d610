//! The peers the XDP balancer is compared with, configured with the same weighted split:
//! nginx `stream` (L4), `HAProxy` in TCP mode (L4), and an application-level router (`FastAPI` +
//! uvicorn choosing v1/v2 at random and forwarding with httpx). Config text is built by pure
//! functions; starting them is done by the e2e benchmark.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

/// One upstream server and its integer weight.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Upstream {
    pub name: String,
    pub address: SocketAddrV4,
    pub canary: bool,
    pub weight: u32,
}

/// Integer weights giving the canary group `canary_percent` of new connections, split evenly
/// inside each group: stable servers share `100 - p`, canary servers share `p` (scaled so
/// that every weight is a whole number).
pub(super) fn weights(stable: usize, canary: usize, canary_percent: u32) -> (u32, u32) {
    let (s, c) = (stable.max(1) as u32, canary.max(1) as u32);
    // Weight per stable server = (100 - p) * c, per canary server = p * s: the group totals
    // are then (100 - p) * s * c and p * s * c.
    ((100 - canary_percent) * c, canary_percent * s)
}

pub(super) fn nginx_conf(listen: SocketAddrV4, upstreams: &[Upstream], dir: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    );
    let _ = writeln!(t, "user root;");
    let _ = writeln!(t, "worker_processes 2;");
    let _ = writeln!(t, "pid {dir}/nginx.pid;");
    let _ = writeln!(t, "error_log {dir}/nginx-error.log warn;");
    let _ = writeln!(t, "events {{ worker_connections 8192; }}");
    let _ = writeln!(t, "stream {{");
    let _ = writeln!(t, "    upstream backends {{");
    for u in upstreams {
        let _ = writeln!(t, "        server {} weight={};", u.address, u.weight);
    }
    let _ = writeln!(t, "    }}");
    let _ = writeln!(t, "    server {{");
    let _ = writeln!(t, "        listen {listen} reuseport backlog=4096;");
    let _ = writeln!(t, "        proxy_pass backends;");
    let _ = writeln!(t, "        proxy_connect_timeout 2s;");
    let _ = writeln!(t, "    }}");
    let _ = writeln!(t, "}}");
    t
}

pub(super) fn haproxy_cfg(listen: SocketAddrV4, upstreams: &[Upstream]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "global");
    let _ = writeln!(t, "    nbthread 2");
    // Two descriptors per connection must fit the process's descriptor limit.
    let _ = writeln!(t, "    maxconn 8000");
    let _ = writeln!(t, "defaults");
    let _ = writeln!(t, "    mode tcp");
    let _ = writeln!(t, "    timeout connect 2s");
    let _ = writeln!(t, "    timeout client 30s");
    let _ = writeln!(t, "    timeout server 30s");
    let _ = writeln!(t, "frontend canary_peer");
    let _ = writeln!(t, "    bind {listen}");
    let _ = writeln!(t, "    default_backend backends");
    let _ = writeln!(t, "backend backends");
    let _ = writeln!(t, "    balance roundrobin");
    for u in upstreams {
        let _ = writeln!(t, "    server {} {} weight {}", u.name, u.address, u.weight);
    }
    t
}

/// The application router: the usual `FastAPI` canary pattern (pick v2 with probability
/// `CANARY_WEIGHT`, else v1; forward the request with a shared httpx client).
pub(super) const ROUTER_PY: &str = r#"import os
import random

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

V1 = os.environ["ROUTER_V1"].split(",")
V2 = os.environ["ROUTER_V2"].split(",")
WEIGHT = float(os.environ["ROUTER_CANARY_WEIGHT"])
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

app = FastAPI()
client = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))


@app.api_route("/{path:path}", methods=["GET", "POST"])
async def route(path: str, request: Request):
    group = V2 if random.random() < WEIGHT else V1
    upstream = random.choice(group)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    r = await client.request(request.method, f"http://{upstream}/{path}", content=await request.body(), headers=headers)
    headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
    return Response(content=r.content, status_code=r.status_code, headers=headers)
"#;

/// `ROUTER_V1` / `ROUTER_V2` values: comma-separated `ip:port` of each group.
pub(super) fn router_groups(upstreams: &[Upstream]) -> (String, String) {
    let join = |canary: bool| {
        upstreams
            .iter()
            .filter(|u| u.canary == canary)
            .map(|u| u.address.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (join(false), join(true))
}

/// Listening addresses of the peers on the load balancer (its own address, not the VIP).
pub(super) fn peer_listen(lb: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(lb, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<Upstream> {
        let (ws, wc) = weights(3, 2, 10);
        let mk = |i: u8, canary: bool, weight| Upstream {
            name: format!("b{i}"),
            address: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, i), 8080),
            canary,
            weight,
        };
        vec![
            mk(1, false, ws),
            mk(2, false, ws),
            mk(3, false, ws),
            mk(4, true, wc),
            mk(5, true, wc),
        ]
    }

    #[test]
    fn weights_give_the_canary_its_share() {
        for (s, c, p) in [(3, 2, 10), (1, 1, 10), (4, 3, 25), (19, 19, 1)] {
            let (ws, wc) = weights(s, c, p);
            let total = f64::from(ws * s as u32 + wc * c as u32);
            let share = f64::from(wc * c as u32) / total;
            assert!((share - f64::from(p) / 100.0).abs() < 1e-9, "{s} {c} {p}");
        }
    }

    #[test]
    fn configs_name_every_upstream_with_its_weight() {
        let u = ups();
        let listen = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8081);
        let nginx = nginx_conf(listen, &u, "/tmp/x");
        assert!(nginx.contains("server 198.18.0.1:8080 weight=180;"));
        assert!(nginx.contains("server 198.18.0.5:8080 weight=30;"));
        assert!(nginx.contains("listen 198.18.0.2:8081"));
        let haproxy = haproxy_cfg(listen, &u);
        assert!(haproxy.contains("server b4 198.18.0.4:8080 weight 30"));
        assert!(haproxy.contains("bind 198.18.0.2:8081"));
        let (v1, v2) = router_groups(&u);
        assert_eq!(v1, "198.18.0.1:8080,198.18.0.2:8080,198.18.0.3:8080");
        assert_eq!(v2, "198.18.0.4:8080,198.18.0.5:8080");
    }
}
