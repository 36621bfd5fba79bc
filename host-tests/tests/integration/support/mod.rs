//! Helpers that only some behaviours need.

pub mod helm;
pub mod kustomize;
pub mod relabel;
pub mod fixed_ports;
