//! /metrics bodies of the components. kube-scheduler and kube-controller-manager are real 1.28
//! captures (fixtures/payloads/); kube-proxy and etcd are generated deterministically with the real
//! size and the same text-format shape, so benchmarks move realistic byte counts.

use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::Bytes;

/// Size of etcd 3.4's /metrics in the reference capture.
pub const ETCD_PAYLOAD_BYTES: usize = 146_757;
/// Typical size of kube-proxy's /metrics.
pub const KUBE_PROXY_PAYLOAD_BYTES: usize = 27_000;

pub fn kube_scheduler() -> Bytes {
    Bytes::from_static(include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/payloads/kube-scheduler-1.28.metrics.txt"
    )))
}

pub fn kube_controller_manager() -> Bytes {
    Bytes::from_static(include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/payloads/kube-controller-manager-1.28.metrics.txt"
    )))
}

pub fn kube_proxy() -> Bytes {
    static P: OnceLock<Bytes> = OnceLock::new();
    P.get_or_init(|| Bytes::from(generate(KUBE_PROXY_PAYLOAD_BYTES, KUBE_PROXY_FAMILIES)))
        .clone()
}

pub fn etcd() -> Bytes {
    static P: OnceLock<Bytes> = OnceLock::new();
    P.get_or_init(|| Bytes::from(generate(ETCD_PAYLOAD_BYTES, ETCD_FAMILIES)))
        .clone()
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label: Option<(&'static str, &'static [&'static str])>,
}

const fn fam(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label: Option<(&'static str, &'static [&'static str])>,
) -> Family {
    Family {
        name,
        help,
        kind,
        label,
    }
}

const KUBE_PROXY_FAMILIES: &[Family] = &[
    fam(
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "[ALPHA] SyncProxyRules latency in seconds",
        Kind::Histogram,
        None,
    ),
    fam(
        "kubeproxy_network_programming_duration_seconds",
        "[ALPHA] In Cluster Network Programming Latency in seconds",
        Kind::Histogram,
        None,
    ),
    fam(
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "[ALPHA] SyncProxyRules latency in seconds for full resyncs",
        Kind::Histogram,
        None,
    ),
    fam(
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "[ALPHA] SyncProxyRules latency in seconds for partial resyncs",
        Kind::Histogram,
        None,
    ),
    fam(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "[ALPHA] The last time proxy rules were successfully synced",
        Kind::Gauge,
        None,
    ),
    fam(
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "[ALPHA] Cumulative proxy rules Endpoint changes",
        Kind::Counter,
        None,
    ),
    fam(
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "[ALPHA] Cumulative proxy rules Service changes",
        Kind::Counter,
        None,
    ),
    fam(
        "kubeproxy_sync_proxy_rules_iptables_total",
        "[ALPHA] Total number of iptables rules owned by kube-proxy",
        Kind::Gauge,
        Some(("table", &["filter", "nat"])),
    ),
    fam(
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "[ALPHA] Number of services with a Local traffic policy and no endpoints",
        Kind::Gauge,
        Some(("traffic_policy", &["internal", "external"])),
    ),
    fam(
        "rest_client_requests_total",
        "[ALPHA] Number of HTTP requests, partitioned by status code, method, and host.",
        Kind::Counter,
        Some(("code", &["200", "201", "404", "409"])),
    ),
    fam(
        "rest_client_request_duration_seconds",
        "[ALPHA] Request latency in seconds. Broken down by verb, and host.",
        Kind::Histogram,
        Some(("verb", &["GET", "POST", "PATCH"])),
    ),
    fam(
        "go_gc_duration_seconds",
        "A summary of the pause duration of garbage collection cycles.",
        Kind::Gauge,
        Some(("quantile", &["0", "0.25", "0.5", "0.75", "1"])),
    ),
    fam(
        "go_goroutines",
        "Number of goroutines that currently exist.",
        Kind::Gauge,
        None,
    ),
    fam(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        Kind::Gauge,
        None,
    ),
];

const ETCD_FAMILIES: &[Family] = &[
    fam("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", Kind::Gauge, None),
    fam("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.", Kind::Gauge, None),
    fam("etcd_server_leader_changes_seen_total", "The number of leader changes seen.", Kind::Counter, None),
    fam("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.", Kind::Gauge, None),
    fam("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.", Kind::Gauge, None),
    fam("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.", Kind::Histogram, None),
    fam("etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend.", Kind::Histogram, None),
    fam("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers", Kind::Histogram, Some(("To", &["8e9e05c52164694d"]))),
    fam("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.", Kind::Gauge, None),
    fam("etcd_debugging_mvcc_keys_total", "Total number of keys.", Kind::Gauge, None),
    fam("etcd_mvcc_put_total", "Total number of puts seen by this member.", Kind::Counter, None),
    fam("etcd_mvcc_range_total", "Total number of ranges seen by this member.", Kind::Counter, None),
    fam("etcd_debugging_store_reads_total", "Total number of reads action by (get/getRecursive), local to this member.", Kind::Counter, Some(("action", &["get", "getRecursive"]))),
    fam("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", Kind::Counter, Some(("grpc_method", &["Range", "Txn", "Put", "DeleteRange", "LeaseGrant", "LeaseKeepAlive", "Watch", "Compact", "Status", "MemberList"]))),
    fam("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.", Kind::Histogram, Some(("grpc_method", &["Range", "Txn", "Put", "LeaseGrant", "Watch"]))),
    fam("go_goroutines", "Number of goroutines that currently exist.", Kind::Gauge, None),
    fam("process_resident_memory_bytes", "Resident memory size in bytes.", Kind::Gauge, None),
];

const BUCKETS: &[&str] = &[
    "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
    "1.024", "2.048", "4.096", "8.192", "+Inf",
];

/// A tiny deterministic PRNG (xorshift): plausible, reproducible sample values.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Renders families (repeating them with a `_shardN` suffix when one pass is too small) until the
/// text is just under `target`, then pads with a final gauge whose HELP text makes the size exact.
fn generate(target: usize, families: &[Family]) -> Vec<u8> {
    let mut out = String::with_capacity(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    'outer: for pass in 0.. {
        for f in families {
            let name = if pass == 0 {
                f.name.to_string()
            } else {
                format!("{}_shard{pass}", f.name)
            };
            let mut block = String::new();
            render(&mut block, &name, f, &mut rng);
            if out.len() + block.len() + 200 > target {
                break 'outer;
            }
            out.push_str(&block);
        }
    }
    let head = "# HELP metrics_gate_fixture_padding Generated fixture; HELP text pads the payload to its real size";
    let tail = "\n# TYPE metrics_gate_fixture_padding gauge\nmetrics_gate_fixture_padding 1\n";
    let pad = target.saturating_sub(out.len() + head.len() + tail.len());
    out.push_str(head);
    out.push_str(&".".repeat(pad));
    out.push_str(tail);
    out.into_bytes()
}

fn render(out: &mut String, name: &str, f: &Family, rng: &mut Rng) {
    let kind = match f.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {}", f.help);
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let labels: Vec<String> = match f.label {
        Some((k, vals)) => vals.iter().map(|v| format!("{k}=\"{v}\"")).collect(),
        None => vec![String::new()],
    };
    for l in labels {
        match f.kind {
            Kind::Histogram => {
                let mut cum = 0u64;
                for b in BUCKETS {
                    cum += rng.next() % 50;
                    let sep = if l.is_empty() { "" } else { "," };
                    let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"{b}\"}} {cum}");
                }
                let braces = if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{l}}}")
                };
                let _ = writeln!(
                    out,
                    "{name}_sum{braces} {}.{:03}",
                    rng.next() % 1000,
                    rng.next() % 1000
                );
                let _ = writeln!(out, "{name}_count{braces} {cum}");
            }
            _ => {
                let braces = if l.is_empty() {
                    String::new()
                } else {
                    format!("{{{l}}}")
                };
                let _ = writeln!(out, "{name}{braces} {}", rng.next() % 100_000);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shape() {
        assert_eq!(etcd().len(), ETCD_PAYLOAD_BYTES);
        assert_eq!(kube_proxy().len(), KUBE_PROXY_PAYLOAD_BYTES);
        assert_eq!(kube_scheduler().len(), 108_658);
        assert_eq!(kube_controller_manager().len(), 225_704);
        let e = String::from_utf8(etcd().to_vec()).unwrap();
        assert!(e.contains("# TYPE etcd_server_has_leader gauge\netcd_server_has_leader "));
        let p = String::from_utf8(kube_proxy().to_vec()).unwrap();
        assert!(p.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"+Inf\"}"));
        // Every line is a comment or `name{labels} value`.
        for line in e.lines().chain(p.lines()) {
            assert!(
                line.starts_with("# ") || line.split(' ').count() == 2,
                "{line}"
            );
        }
        assert_eq!(etcd(), etcd()); // deterministic within a run; values come from a fixed seed
    }
}
