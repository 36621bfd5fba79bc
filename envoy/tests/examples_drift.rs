//! Every Envoy configuration the repository ships is the renderer's output: a committed copy that
//! differs from what `metrics-gate-render examples` writes fails here.

use std::path::PathBuf;

use metrics_gate_envoy::examples;

#[test]
fn committed_examples_match_the_renderer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut drift = Vec::new();
    for ex in examples::all() {
        let committed = std::fs::read_to_string(root.join(ex.path)).unwrap_or_default();
        if committed != ex.text() {
            drift.push(ex.path);
        }
    }
    assert!(
        drift.is_empty(),
        "out of date with the renderer: {}\nrun `{}` (or `./run render`) and commit the result",
        drift.join(", "),
        examples::REGENERATE
    );
}

#[test]
fn examples_bind_what_their_deployments_expect() {
    for ex in examples::all() {
        let Some(stack) = ex.stack() else { continue };
        assert_eq!(stack.check(), Ok(()), "{}", ex.path);
        let text = metrics_gate_envoy::render_yaml(stack);
        // Deployed configurations take the node IP at start; nothing else is left to substitute.
        let placeholders = text.matches("${").count();
        let listeners = stack.components.len() + usize::from(stack.own_listener.is_some());
        if ex.path.contains("node") || ex.path.contains("manifests/") || ex.path.contains("compose")
        {
            assert_eq!(
                placeholders, listeners,
                "{}: one ${{NODE_IP}} per listener",
                ex.path
            );
            assert_eq!(
                placeholders,
                text.matches("${NODE_IP}").count(),
                "{}",
                ex.path
            );
        } else {
            assert_eq!(placeholders, 0, "{}", ex.path);
        }
    }
}
