//! Native unit tests of the rendered shape. That Envoy accepts the result is checked against the
//! real binary in `tests/envoy_validate.rs`.

#[allow(unused_imports)]
use crate::model::{OwnListener, OWN_PORT};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::*;

fn stack(components: Vec<Component>) -> Stack {
    Stack {
        access_log: true,
        local_token_verification: None,
        node_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)).into(),
        admin_socket: crate::own_endpoints::ADMIN_SOCKET.into(),
        own_listener: None,
        wasm: WasmCode::file("/opt/metrics-gate/metrics_gate.wasm"),
        apiserver: Apiserver::in_cluster(),
        credentials_dir: "/var/run/metrics-gate/credentials".into(),
        tls: TlsFiles::default(),
        components,
    }
}

fn all_presets() -> Stack {
    stack(
        Preset::ALL
            .iter()
            .map(|p| Component::preset(*p, json!({"component": p.name()})))
            .collect(),
    )
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

fn hcm(listener: &Value) -> &Value {
    &listener["filter_chains"][0]["filters"][0]["typed_config"]
}

fn filter_names(listener: &Value) -> Vec<&str> {
    hcm(listener)["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

#[test]
fn presets_have_standard_ports_and_schemes() {
    let c = |p| Component::preset(p, json!({}));
    let kp = c(Preset::KubeProxy);
    assert_eq!((kp.name.as_str(), kp.listen_port), ("kube-proxy", 10249));
    assert_eq!(
        kp.upstream,
        "127.0.0.1:10249".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(kp.upstream_tls, UpstreamTls::Plain);
    assert_eq!(kp.upstream_credentials, UpstreamCredentials::None);

    let kcm = c(Preset::KubeControllerManager);
    assert_eq!(
        kcm.upstream,
        "127.0.0.1:10257".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(kcm.upstream_tls, UpstreamTls::TlsNoVerify);
    assert_eq!(kcm.upstream_credentials, UpstreamCredentials::Proxy);

    let ks = c(Preset::KubeScheduler);
    assert_eq!((ks.listen_port, ks.upstream.port()), (10259, 10259));
    assert_eq!(ks.upstream_tls, UpstreamTls::TlsNoVerify);
    assert_eq!(ks.upstream_credentials, UpstreamCredentials::Proxy);

    let etcd = c(Preset::Etcd);
    assert_eq!((etcd.name.as_str(), etcd.upstream.port()), ("etcd", 2381));
    assert_eq!(etcd.upstream_tls, UpstreamTls::Plain);
    assert_eq!(etcd.upstream_credentials, UpstreamCredentials::None);

    for p in Preset::ALL {
        assert_eq!(Preset::from_name(p.name()), Some(p));
    }
}

#[test]
fn bootstrap_skeleton() {
    let b = render(&all_presets());
    assert_eq!(
        b["node"],
        json!({"id": "metrics-gate", "cluster": "metrics-gate"})
    );
    assert_eq!(
        b["bootstrap_extensions"][0]["name"],
        "envoy.bootstrap.internal_listener"
    );
    // Admin only on a Unix socket that only the gate may open.
    assert_eq!(
        b["admin"]["address"],
        json!({"pipe": {"path": "/var/run/metrics-gate/admin.sock", "mode": 0o600}})
    );
    let listeners = &b["static_resources"]["listeners"];
    let clusters = &b["static_resources"]["clusters"];
    // 1 internal listener + 4 components; 2 apiserver clusters + 4 components.
    assert_eq!(listeners.as_array().unwrap().len(), 5);
    assert_eq!(clusters.as_array().unwrap().len(), 6);
    for p in Preset::ALL {
        named(listeners, p.name());
        named(clusters, p.name());
    }
    // No environment substitution, no overload manager: nothing Envoy would not read literally.
    let text = b.to_string();
    assert!(!text.contains("${"), "{text}");
    assert!(b.get("overload_manager").is_none());
}

#[test]
fn callout_path_matches_the_reference_pattern() {
    let b = render(&all_presets());
    let listeners = &b["static_resources"]["listeners"];
    let clusters = &b["static_resources"]["clusters"];

    let internal = named(listeners, CREDENTIALS_LISTENER);
    assert_eq!(internal["internal_listener"], json!({}));
    assert!(internal.get("address").is_none());
    assert_eq!(
        filter_names(internal),
        [
            "envoy.filters.http.credential_injector",
            "envoy.filters.http.router"
        ]
    );
    let routes = &hcm(internal)["route_config"]["virtual_hosts"][0]["routes"];
    let paths: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        ]
    );
    let route = &routes[0];
    assert_eq!(
        route["match"]["headers"][0]["string_match"]["exact"],
        "POST"
    );
    assert_eq!(
        route["route"],
        json!({"cluster": "kube-apiserver", "timeout": "5s"})
    );

    let injector = &hcm(internal)["http_filters"][0]["typed_config"];
    assert_eq!(injector["overwrite"], true);
    let generic = &injector["credential"]["typed_config"];
    assert_eq!(generic["header"], "Authorization");
    assert_eq!(generic["header_value_prefix"], "Bearer ");
    assert_eq!(
        generic["credential"],
        json!({"name": "serviceaccount-token", "sds_config": {"path_config_source": {
            "path": "/var/run/metrics-gate/credentials/sds.yaml",
            "watched_directory": {"path": "/var/run/metrics-gate/credentials"}}}})
    );

    let callout = named(clusters, CALLOUT_CLUSTER);
    assert_eq!(
        callout["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"],
        json!({"envoy_internal_address": {"server_listener_name": "apiserver-credentials"}})
    );

    let api = named(clusters, APISERVER_CLUSTER);
    assert_eq!(api["type"], "STRICT_DNS");
    assert_eq!(
        api["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        json!({"address": "kubernetes.default.svc", "port_value": 443})
    );
    let tls = &api["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], "kubernetes.default.svc");
    assert_eq!(
        tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    );
}

#[test]
fn apiserver_by_ip_needs_no_resolver() {
    let mut s = all_presets();
    s.apiserver.address = "127.0.0.1".into();
    s.apiserver.port = 6443;
    s.apiserver.timeout_ms = 1500;
    let b = render(&s);
    assert_eq!(
        named(&b["static_resources"]["clusters"], APISERVER_CLUSTER)["type"],
        "STATIC"
    );
    let internal = named(&b["static_resources"]["listeners"], CREDENTIALS_LISTENER);
    assert_eq!(
        hcm(internal)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
        "1.500s"
    );
}

#[test]
fn component_listener_normalises_and_gates() {
    let b = render(&all_presets());
    let l = named(&b["static_resources"]["listeners"], "kube-scheduler");
    assert_eq!(
        l["address"]["socket_address"],
        json!({"address": "127.0.0.2", "port_value": 10259})
    );
    let h = hcm(l);
    assert_eq!(h["stat_prefix"], "kube-scheduler");
    // AUTO and merge_slashes=false are the proto defaults: left out of proto3 JSON.
    assert!(h.get("codec_type").is_none());
    assert_eq!(h["normalize_path"], true);
    assert!(h.get("merge_slashes").is_none());
    assert_eq!(h["use_remote_address"], true);
    assert_eq!(h["path_with_escaped_slashes_action"], "KEEP_UNCHANGED");
    let route = &h["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["match"], json!({"prefix": "/"}));
    assert_eq!(route["route"]["cluster"], "kube-scheduler");
    assert!(route["route"]["timeout"].is_string());

    let wasm = &h["http_filters"][1]["typed_config"]["config"];
    assert_eq!(wasm["name"], "metrics-gate");
    assert_eq!(wasm["root_id"], "metrics-gate");
    assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
    assert_eq!(wasm["vm_config"]["vm_id"], "metrics-gate");
    assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        wasm["vm_config"]["code"]["local"]["filename"],
        "/opt/metrics-gate/metrics_gate.wasm"
    );
    assert_eq!(
        wasm["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    let passed: Value =
        serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(passed, json!({"component": "kube-scheduler"}));
}

#[test]
fn proxy_credentials_are_injected_after_the_filter() {
    let b = render(&all_presets());
    let listeners = &b["static_resources"]["listeners"];
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let l = named(listeners, name);
        assert_eq!(
            filter_names(l),
            [
                "envoy.filters.http.buffer",
                "envoy.filters.http.wasm",
                "envoy.filters.http.credential_injector",
                "envoy.filters.http.router"
            ]
        );
        // The router must not strip what the injector just added; only Proxy-Authorization goes.
        assert_eq!(
            hcm(l)["route_config"]["virtual_hosts"][0]["routes"][0]["request_headers_to_remove"],
            json!(["proxy-authorization"])
        );
        // Same SDS source as the callout path: one subscription, one token.
        let internal = named(listeners, CREDENTIALS_LISTENER);
        assert_eq!(hcm(l)["http_filters"][2], hcm(internal)["http_filters"][0]);
    }
    for name in ["kube-proxy", "etcd"] {
        let l = named(listeners, name);
        assert_eq!(
            filter_names(l),
            [
                "envoy.filters.http.buffer",
                "envoy.filters.http.wasm",
                "envoy.filters.http.router"
            ]
        );
        let route = &hcm(l)["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(
            route["request_headers_to_remove"],
            json!(["authorization", "proxy-authorization"])
        );
    }
}

#[test]
fn upstream_tls_variants() {
    let b = render(&all_presets());
    let clusters = &b["static_resources"]["clusters"];
    let ks = named(clusters, "kube-scheduler");
    assert_eq!(ks["type"], "STATIC");
    assert_eq!(
        ks["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        json!({"address": "127.0.0.1", "port_value": 10259})
    );
    assert_eq!(
        ks["transport_socket"],
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}})
    );
    assert!(named(clusters, "etcd").get("transport_socket").is_none());

    let mut c = Component::preset(Preset::Etcd, json!({}));
    c.upstream_tls = UpstreamTls::TlsVerify {
        ca_file: "/etc/etcd/ca.crt".into(),
        sni: "etcd.local".into(),
    };
    let b = render(&stack(vec![c]));
    let tls =
        &named(&b["static_resources"]["clusters"], "etcd")["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], "etcd.local");
    let v = &tls["common_tls_context"]["validation_context"];
    assert_eq!(v["trusted_ca"]["filename"], "/etc/etcd/ca.crt");
    assert_eq!(
        v["match_typed_subject_alt_names"][0],
        json!({"san_type": "DNS", "matcher": {"exact": "etcd.local"}})
    );
}

#[test]
fn sds_resource_names_the_token_file() {
    let text = sds_resource("/var/run/secrets/tokens/metrics-gate");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "serviceaccount-token",
            "generic_secret": {"secret": {"filename": "/var/run/secrets/tokens/metrics-gate"}}}]})
    );
}

#[test]
fn credentials_dir_trailing_slash() {
    let mut s = all_presets();
    s.credentials_dir = "/creds/".into();
    let b = render(&s);
    let internal = named(&b["static_resources"]["listeners"], CREDENTIALS_LISTENER);
    let src = &hcm(internal)["http_filters"][0]["typed_config"]["credential"]["typed_config"]
        ["credential"]["sds_config"]["path_config_source"];
    assert_eq!(src["path"], "/creds/sds.yaml");
    assert_eq!(src["watched_directory"]["path"], "/creds");
}

#[test]
fn ipv6_node_ip() {
    let mut s = all_presets();
    s.node_ip = "fd00::2".parse::<IpAddr>().unwrap().into();
    let b = render(&s);
    let l = named(&b["static_resources"]["listeners"], "etcd");
    assert_eq!(l["address"]["socket_address"]["address"], "fd00::2");
}

#[test]
fn check_rejects_collisions() {
    assert_eq!(all_presets().check(), Ok(()));

    let dup = stack(vec![
        Component::preset(Preset::Etcd, json!({})),
        Component::preset(Preset::Etcd, json!({})),
    ]);
    assert!(dup.check().is_err());

    let mut same_port = Component::preset(Preset::KubeProxy, json!({}));
    same_port.listen_port = 2381;
    assert!(
        stack(vec![Component::preset(Preset::Etcd, json!({})), same_port])
            .check()
            .is_err()
    );

    let mut reserved = Component::preset(Preset::Etcd, json!({}));
    reserved.name = APISERVER_CLUSTER.into();
    assert!(stack(vec![reserved]).check().is_err());

    let mut bad = Component::preset(Preset::Etcd, json!({}));
    bad.name = "etcd metrics".into();
    assert!(stack(vec![bad]).check().is_err());

    // Port 0 twice is fine: the kernel picks two ports.
    let mut a = Component::preset(Preset::Etcd, json!({}));
    let mut b = Component::preset(Preset::KubeProxy, json!({}));
    a.listen_port = 0;
    b.listen_port = 0;
    assert_eq!(stack(vec![a, b]).check(), Ok(()));
}

#[test]
fn stub_wasm_differs_only_in_on_configure() {
    use crate::testing::{PASS_THROUGH_WASM, REJECTING_WASM};
    assert_eq!(&PASS_THROUGH_WASM[..4], b"\0asm");
    let diff: Vec<usize> = (0..PASS_THROUGH_WASM.len())
        .filter(|&i| PASS_THROUGH_WASM[i] != REJECTING_WASM[i])
        .collect();
    assert_eq!(diff.len(), 1);
}

fn transport(listener: &Value) -> &Value {
    &listener["filter_chains"][0]["transport_socket"]
}

#[test]
fn listeners_use_tls_by_default_with_the_serving_certificate_from_sds() {
    let b = render(&all_presets());
    for p in Preset::ALL {
        let t = transport(named(&b["static_resources"]["listeners"], p.name()));
        assert_eq!(t["name"], "envoy.transport_sockets.tls");
        let ctx = &t["typed_config"];
        assert_eq!(
            ctx["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
        );
        assert_eq!(
            ctx["common_tls_context"]["tls_certificate_sds_secret_configs"],
            json!([{"name": "serving-certificate", "sds_config": {"path_config_source": {
                "path": "/var/run/metrics-gate/credentials/serving-certificate.yaml",
                "watched_directory": {"path": "/var/run/metrics-gate/credentials"}}}}])
        );
        assert!(ctx["common_tls_context"]
            .get("validation_context_sds_secret_config")
            .is_none());
        assert!(ctx.get("require_client_certificate").is_none());
        // The filter is not told to trust certificates nobody verifies.
        let wasm = &hcm(named(&b["static_resources"]["listeners"], p.name()))["http_filters"][1];
        let conf = wasm["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        assert!(!conf.contains("client_certificates"), "{conf}");
    }
    // The internal listener has no TLS of its own.
    assert!(transport(named(
        &b["static_resources"]["listeners"],
        CREDENTIALS_LISTENER
    ))
    .is_null());
}

#[test]
fn plaintext_only_when_asked() {
    let s = stack(vec![Component::preset(Preset::Etcd, json!({})).plaintext()]);
    let b = render(&s);
    assert!(transport(named(&b["static_resources"]["listeners"], "etcd")).is_null());
}

#[test]
fn client_certificates_optional_and_required() {
    for (mode, required) in [
        (ClientCertificates::Optional, false),
        (ClientCertificates::Required, true),
    ] {
        let mut c = Component::preset(Preset::KubeProxy, json!({"allowed_paths": ["/metrics"]}));
        c.listener_tls = ListenerTls::Tls {
            client_certificates: mode,
        };
        let mut s = stack(vec![c]);
        assert!(s.check().is_err(), "no client CA file must be refused");
        s.tls.client_ca_file = Some("/etc/ca/ca.crt".into());
        assert_eq!(s.check(), Ok(()));
        let b = render(&s);
        let l = named(&b["static_resources"]["listeners"], "kube-proxy");
        let ctx = &transport(l)["typed_config"];
        assert_eq!(
            ctx["common_tls_context"]["validation_context_sds_secret_config"],
            json!({"name": "client-ca", "sds_config": {"path_config_source": {
                "path": "/var/run/metrics-gate/credentials/client-ca.yaml",
                "watched_directory": {"path": "/var/run/metrics-gate/credentials"}}}})
        );
        assert_eq!(ctx.get("require_client_certificate").is_some(), required);
        let conf: Value = serde_json::from_str(
            hcm(l)["http_filters"][1]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            conf,
            json!({"allowed_paths": ["/metrics"], "client_certificates": true})
        );
    }
}

#[test]
fn passthrough_forwards_the_callers_authorization() {
    let mut c = Component::preset(Preset::KubeScheduler, json!({}));
    c.upstream_credentials = UpstreamCredentials::Passthrough;
    let b = render(&stack(vec![c]));
    let l = named(&b["static_resources"]["listeners"], "kube-scheduler");
    assert_eq!(
        filter_names(l),
        [
            "envoy.filters.http.buffer",
            "envoy.filters.http.wasm",
            "envoy.filters.http.router"
        ]
    );
    let route = &hcm(l)["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(
        route["request_headers_to_remove"],
        json!(["proxy-authorization"])
    );
    let conf: Value = serde_json::from_str(
        hcm(l)["http_filters"][1]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(conf, json!({"forward_caller_credentials": true}));
}

#[test]
fn yaml_is_the_same_document_as_json() {
    let mut s = all_presets();
    s.node_ip = NodeAddress::node_ip_placeholder();
    let yaml: Value = serde_yaml_ng::from_str(&render_yaml(&s)).unwrap();
    assert_eq!(yaml, render(&s));
    let l = named(&yaml["static_resources"]["listeners"], "etcd");
    assert_eq!(l["address"]["socket_address"]["address"], "${NODE_IP}");
}

#[test]
fn sds_tls_resources() {
    let v: Value = serde_json::from_str(&sds_serving_certificate("/etc/tls/")).unwrap();
    assert_eq!(
        v["resources"][0],
        json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "serving-certificate",
            "tls_certificate": {
                "certificate_chain": {"filename": "/etc/tls/tls.crt"},
                "private_key": {"filename": "/etc/tls/tls.key"},
                "watched_directory": {"path": "/etc/tls"}}})
    );
    let v: Value = serde_json::from_str(&sds_client_ca("/etc/client-ca/ca.crt")).unwrap();
    assert_eq!(
        v["resources"][0]["validation_context"],
        json!({"trusted_ca": {"filename": "/etc/client-ca/ca.crt"},
            "watched_directory": {"path": "/etc/client-ca"}})
    );
}

#[test]
fn extra_presets() {
    let ports: Vec<(&str, u16)> = Preset::HOST_NETWORK
        .iter()
        .map(|p| (p.name(), p.port()))
        .collect();
    assert_eq!(
        ports,
        [
            ("kube-vip", 2112),
            ("cilium-agent", 9962),
            ("cilium-operator", 9963),
            ("hubble", 9965)
        ]
    );
    for p in Preset::every() {
        assert_eq!(Preset::from_name(p.name()), Some(p));
        let c = Component::preset(p, json!({}));
        assert_eq!(c.upstream.port(), p.port());
    }
    assert_eq!(Preset::every().count(), 8);
}

mod components_file {
    use super::*;
    use crate::file::ComponentsFile;

    fn load(text: &str) -> Result<Vec<Component>, String> {
        let f = ComponentsFile::parse(text, "c.yaml").map_err(|e| e.to_string())?;
        f.components("c.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn presets_and_custom_components() {
        let text = r#"
tls:
  cert_dir: /tls
  client_ca_file: /ca/ca.crt
components:
- preset: kube-scheduler
- preset: etcd
  listen_port: 12381
  listener: {tls: plaintext}
- name: my-controller
  listen_port: 8443
  upstream: {address: "127.0.0.1:8080", scheme: https, verify: {ca_file: /ca.crt, server_name: ctl}}
  upstream_credentials: passthrough
  listener: {client_certificates: required}
  allowed_paths: [/metrics, /metrics/extra]
  audiences: [metrics-gate]
  authorization:
    resource_attributes: {namespace: ns, resource: services, subresource: proxy, name: ctl}
  identity_headers: {enabled: true}
  plugin: {cache: {allow_ttl_seconds: 60}}
"#;
        let f = ComponentsFile::parse(text, "c.yaml").unwrap();
        assert_eq!(
            f.tls_files(),
            TlsFiles {
                cert_dir: "/tls".into(),
                client_ca_file: Some("/ca/ca.crt".into())
            }
        );
        let cs = f.components("c.yaml").unwrap();
        assert_eq!(cs[0], Component::preset(Preset::KubeScheduler, json!({})));
        assert_eq!(cs[1].listen_port, 12381);
        assert_eq!(cs[1].listener_tls, ListenerTls::Plaintext);
        let c = &cs[2];
        assert_eq!(c.upstream, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            c.upstream_tls,
            UpstreamTls::TlsVerify {
                ca_file: "/ca.crt".into(),
                sni: "ctl".into()
            }
        );
        assert_eq!(c.upstream_credentials, UpstreamCredentials::Passthrough);
        assert_eq!(
            c.listener_tls,
            ListenerTls::Tls {
                client_certificates: ClientCertificates::Required
            }
        );
        assert_eq!(
            c.plugin_config,
            json!({
                "cache": {"allow_ttl_seconds": 60},
                "allowed_paths": ["/metrics", "/metrics/extra"],
                "audiences": ["metrics-gate"],
                "authorization": {"resource_attributes": {"namespace": "ns", "resource": "services", "subresource": "proxy", "name": "ctl"}},
                "identity_headers": {"enabled": true},
            })
        );
    }

    #[test]
    fn errors_name_the_line_the_field_and_the_allowed_values() {
        let e = load("components:\n- preset: kube-schedular\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("components[0].preset"), "{e}");
        assert!(e.contains("kube-scheduler") && e.contains("hubble"), "{e}");

        let e = load("components:\n- preset: etcd\n  upstream_credentials: token\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("upstream_credentials"),
            "{e}"
        );
        assert!(e.contains("`none`, `proxy`, `passthrough`"), "{e}");

        let e = load("components:\n- preset: etcd\n  listener: {tls: off}\n").unwrap_err();
        assert!(
            e.contains("expected `tls` or `plaintext`") && e.contains("line 3"),
            "{e}"
        );

        let e = load("components:\n- preset: etcd\n  lisen_port: 1\n").unwrap_err();
        assert!(
            e.contains("unknown field `lisen_port`") && e.contains("listen_port"),
            "{e}"
        );

        let e = load("components:\n- name: x\n  listen_port: 1\n").unwrap_err();
        assert!(e.contains("components[0] (x).upstream: required"), "{e}");

        let e = load("components:\n- preset: etcd\n  allowed_paths: [metrics]\n").unwrap_err();
        assert!(
            e.contains("allowed_paths") && e.contains("must start with"),
            "{e}"
        );

        let e = load("components:\n- preset: etcd\n  listener: {tls: plaintext, client_certificates: optional}\n")
            .unwrap_err();
        assert!(e.contains("client_certificates: needs tls"), "{e}");
    }

    #[test]
    fn the_shipped_example_file_loads() {
        let text = include_str!("../components.example.yaml");
        let cs = load(text).unwrap();
        assert!(cs.len() >= 5, "{cs:?}");
    }
}

#[test]
fn cert_secret_is_a_tls_secret_with_a_ca() {
    let req = crate::cert::CertRequest {
        dns_names: vec!["metrics-gate.metrics-gate.svc".into()],
        ips: vec!["10.0.0.5".parse().unwrap()],
        ..Default::default()
    };
    let issued = crate::cert::issue(&req).unwrap();
    let yaml = crate::cert::secret_yaml(&req, &issued);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(v["type"], "kubernetes.io/tls");
    assert_eq!(
        v["metadata"],
        json!({"name": "metrics-gate-tls", "namespace": "metrics-gate"})
    );
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            v["stringData"][k]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN"),
            "{k}"
        );
    }
    assert_eq!(v["stringData"]["tls.crt"], issued.cert_pem);
    assert_ne!(issued.ca_pem, issued.cert_pem);
}

#[test]
fn the_own_listener_serves_ready_and_the_gated_own_metrics_only() {
    let mut s = all_presets();
    s.own_listener = Some(OwnListener {
        port: OWN_PORT,
        tls: ListenerTls::default(),
    });
    let b = render(&s);
    let listeners = &b["static_resources"]["listeners"];
    let own = named(listeners, crate::own_endpoints::OWN_LISTENER);
    assert_eq!(own["address"]["socket_address"]["port_value"], 9902);
    let hcm = &own["filter_chains"][0]["filters"][0]["typed_config"];
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.http.health_check",
            "envoy.filters.http.buffer",
            "envoy.filters.http.wasm",
            "envoy.filters.http.router"
        ]
    );
    let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
    assert_eq!(routes.as_array().unwrap().len(), 1, "one path only");
    assert_eq!(routes[0]["match"]["path"], "/metrics");
    assert_eq!(routes[0]["route"]["cluster"], "metrics-gate-admin");
    assert_eq!(routes[0]["route"]["prefix_rewrite"], "/stats/prometheus");
    let admin = named(&b["static_resources"]["clusters"], "metrics-gate-admin");
    assert_eq!(
        admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
            ["path"],
        "/var/run/metrics-gate/admin.sock"
    );
}

#[test]
fn remote_wasm_is_fetched_through_its_own_cluster_and_pinned_by_sha256() {
    let sha = "ab".repeat(32);
    let mut s = all_presets();
    s.wasm = WasmCode::Remote(RemoteWasm {
        url: "https://wasm.example.com:8443/mg/metrics_gate.wasm".into(),
        sha256: sha.clone(),
        ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
    });
    assert_eq!(s.check(), Ok(()));
    let v = render(&s);
    let clusters = &v["static_resources"]["clusters"];
    for p in Preset::ALL {
        let l = named(&v["static_resources"]["listeners"], p.name());
        let code = &hcm(l)["http_filters"][1]["typed_config"]["config"]["vm_config"]["code"];
        assert!(code.get("local").is_none(), "{code:#}");
        let remote = &code["remote"];
        assert_eq!(remote["sha256"], sha.as_str());
        assert_eq!(
            remote["http_uri"]["uri"],
            "https://wasm.example.com:8443/mg/metrics_gate.wasm"
        );
        assert_eq!(
            remote["http_uri"]["cluster"],
            remote_code::WASM_CODE_CLUSTER
        );
        assert_eq!(remote["retry_policy"]["num_retries"], 3);
    }
    let c = named(clusters, remote_code::WASM_CODE_CLUSTER);
    assert_eq!(c["type"], "STRICT_DNS");
    let addr = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
    assert_eq!(addr["socket_address"]["address"], "wasm.example.com");
    assert_eq!(addr["socket_address"]["port_value"], 8443);
    let tls = &c["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], "wasm.example.com");
    let vc = &tls["common_tls_context"]["validation_context"];
    assert_eq!(
        vc["trusted_ca"]["filename"],
        "/etc/ssl/certs/ca-certificates.crt"
    );
    assert_eq!(
        vc["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "wasm.example.com"
    );

    // Plain HTTP to an IP: a STATIC cluster without TLS (the digest decides what is loaded).
    s.wasm = WasmCode::Remote(RemoteWasm {
        url: "http://127.0.0.1:8080/metrics_gate.wasm".into(),
        sha256: sha.clone(),
        ca_file: String::new(),
    });
    assert_eq!(s.check(), Ok(()));
    let v = render(&s);
    let c = named(
        &v["static_resources"]["clusters"],
        remote_code::WASM_CODE_CLUSTER,
    );
    assert_eq!(c["type"], "STATIC");
    assert!(c.get("transport_socket").is_none(), "{c:#}");

    // A file needs no such cluster; a digest Envoy could never match is refused up front.
    let v = render(&all_presets());
    let names: Vec<&str> = v["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&remote_code::WASM_CODE_CLUSTER),
        "{names:?}"
    );
    s.wasm = WasmCode::Remote(RemoteWasm {
        url: "http://127.0.0.1:8080/metrics_gate.wasm".into(),
        sha256: sha.to_uppercase(),
        ca_file: String::new(),
    });
    assert!(s.check().is_err());
}
