//! What the bench compares: the setups and the payloads every setup serves.

use metrics_gate_envoy::Preset;
use metrics_gate_host_tests::components::ComponentKind;

/// The listeners of the rendered stack that the bench uses, and what they serve. Both presets
/// proxy plain HTTP to their upstream without credentials; their clusters are pointed at the
/// bench's fakes.
pub const PAYLOADS: [(&str, Preset, ComponentKind); 2] = [
    ("225k", Preset::Etcd, ComponentKind::KubeControllerManager),
    ("27k", Preset::KubeProxy, ComponentKind::KubeProxy),
];

pub const SETUPS: [Setup; 6] = [
    Setup::Direct,
    Setup::Bare,
    Setup::Warm,
    Setup::Fresh,
    Setup::Haproxy,
    Setup::Floor,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Setup {
    Direct,
    Bare,
    Warm,
    Fresh,
    Haproxy,
    /// Envoy with a wasm filter that does nothing and exports only the callbacks metrics-gate
    /// uses (bench/floor.wat): what any proxy-wasm filter costs before it does any work.
    Floor,
}

impl Setup {
    pub fn id(self) -> &'static str {
        match self {
            Setup::Direct => "a",
            Setup::Bare => "b",
            Setup::Warm => "c",
            Setup::Fresh => "d",
            Setup::Haproxy => "e",
            Setup::Floor => "f",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Setup::Direct => "a: fake upstream directly",
            Setup::Bare => "b: bare Envoy (no filter)",
            Setup::Warm => "c: Envoy + metrics-gate, warm cache",
            Setup::Fresh => "d: Envoy + metrics-gate, new token per request",
            Setup::Haproxy => "e: HAProxy 2.6, seed config",
            Setup::Floor => "f: Envoy + do-nothing wasm filter (floor)",
        }
    }
}
