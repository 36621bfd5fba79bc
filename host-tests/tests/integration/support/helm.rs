//! Just enough of Helm's template language to render kube-prometheus-stack's rule templates with
//! the chart's default values (host-tests/fixtures/kube-prometheus-stack/): Go template actions
//! with `{{-`/`-}}` trimming, comments, raw strings, `if`/`else`/`with`/`end`, variables, pipelines,
//! and the handful of Sprig functions and named templates those files call. Anything else panics, so
//! a chart update that needs more is noticed instead of rendered wrongly.
#![allow(dead_code)]

use std::collections::HashMap;

use serde_yaml_ng::{Mapping, Value};

/// Release and cluster facts the templates read besides `.Values`.
pub struct Release {
    pub name: &'static str,
    pub namespace: &'static str,
    pub chart: &'static str,
    /// `.Capabilities.KubeVersion.GitVersion`.
    pub kube_version: &'static str,
}

pub const RELEASE: Release =
    Release { name: "kube-prometheus-stack", namespace: "monitoring", chart: "kube-prometheus-stack", kube_version: "v1.32.0" };

enum Piece {
    Text(String),
    Action(String),
}

/// Splits a template into text and actions, applying the `{{- ` / ` -}}` whitespace trims.
fn lex(src: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let trim_prev = after.starts_with("- ") || after.starts_with("-\n");
        if trim_prev {
            text = text.trim_end().to_string();
        }
        pieces.push(Piece::Text(text));
        let body_start = if trim_prev { 2 } else { 0 };
        // The action ends at the first `}}` outside a raw or quoted string (comments end at `*/`).
        let bytes = after.as_bytes();
        let mut i = body_start;
        let mut quote: Option<u8> = None;
        let end = loop {
            assert!(i + 1 < bytes.len(), "unterminated action in template");
            let c = bytes[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(b'"') if c == b'\\' => i += 1,
                Some(_) => {}
                None if c == b'"' || c == b'`' => quote = Some(c),
                None if after[i..].starts_with("/*") => {
                    i += after[i..].find("*/").expect("unterminated comment");
                }
                None if after[i..].starts_with("}}") => break i,
                None => {}
            }
            i += 1;
        };
        let mut body = after[body_start..end].to_string();
        trim_next = body.ends_with(" -") || body.ends_with("\n-");
        if trim_next {
            body.truncate(body.len() - 2);
        }
        pieces.push(Piece::Action(body.trim().to_string()));
        rest = &after[end + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    pieces.push(Piece::Text(text));
    pieces
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open,
    Close,
    Pipe,
    Str(String),
    Num(i64),
    Field(Vec<String>),
    Var(String),
    Ident(String),
    Assign,
}

fn tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if c == '|' {
            out.push(Tok::Pipe);
            i += 1;
        } else if s[i..].starts_with(":=") {
            out.push(Tok::Assign);
            i += 2;
        } else if c == '"' {
            let mut j = i + 1;
            let mut v = String::new();
            while b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                v.push(b[j] as char);
                j += 1;
            }
            out.push(Tok::Str(v));
            i = j + 1;
        } else if c == '`' {
            let j = i + 1 + s[i + 1..].find('`').unwrap();
            out.push(Tok::Str(s[i + 1..j].to_string()));
            i = j + 1;
        } else {
            let j = s[i..].find(|c: char| c.is_whitespace() || "()|".contains(c)).map_or(s.len(), |k| i + k);
            let word = &s[i..j];
            out.push(if let Some(path) = word.strip_prefix('.') {
                Tok::Field(if path.is_empty() { vec![] } else { path.split('.').map(String::from).collect() })
            } else if word.starts_with('$') {
                Tok::Var(word.to_string())
            } else if let Ok(n) = word.parse() {
                Tok::Num(n)
            } else {
                Tok::Ident(word.to_string())
            });
            i = j;
        }
    }
    out
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => serde_yaml_ng::to_string(other).unwrap().trim_end().to_string(),
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    v.get(key).unwrap_or(&NULL)
}

/// A semver constraint of the form the chart uses (`>=1.14.0-0`, `<9.9.9-9`) against `version`.
fn semver_compare(constraint: &str, version: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v').split('-').next().unwrap().split('.').map(|p| p.parse().unwrap()).collect()
    };
    let (op, want) = if let Some(w) = constraint.strip_prefix(">=") {
        (">=", w)
    } else if let Some(w) = constraint.strip_prefix('<') {
        ("<", w)
    } else {
        panic!("semverCompare {constraint:?} not supported")
    };
    let (have, want) = (parse(version), parse(want));
    match op {
        ">=" => have >= want,
        _ => have < want,
    }
}

pub struct Renderer<'a> {
    root: Value,
    vars: HashMap<String, Value>,
    dots: Vec<Value>,
    release: &'a Release,
}

impl<'a> Renderer<'a> {
    pub fn new(values: &Value, release: &'a Release) -> Self {
        let mut root = Mapping::new();
        root.insert(s("Values"), values.clone());
        let caps: Value = serde_yaml_ng::from_str(&format!("KubeVersion: {{GitVersion: {}}}", release.kube_version)).unwrap();
        root.insert(s("Capabilities"), caps);
        let rel: Value = serde_yaml_ng::from_str(&format!("{{Name: {}, Namespace: {}}}", release.name, release.namespace)).unwrap();
        root.insert(s("Release"), rel);
        let chart: Value = serde_yaml_ng::from_str(&format!("{{Name: {}}}", release.chart)).unwrap();
        root.insert(s("Chart"), chart);
        let root = Value::Mapping(root);
        Renderer { dots: vec![root.clone()], root, vars: HashMap::new(), release }
    }

    fn values(&self) -> &Value {
        get(&self.root, "Values")
    }

    /// The named templates these files include (templates/_helpers.tpl, with the default values).
    fn named(&self, name: &str) -> String {
        let values = self.values();
        let job = |key: &str, default: &str| {
            let o = text(get(get(values, key), "jobNameOverride"));
            if o.is_empty() { default.to_string() } else { o }
        };
        let name_of_chart = || {
            let o = text(get(values, "nameOverride"));
            if o.is_empty() { self.release.chart.to_string() } else { o }
        };
        match name {
            "kube-prometheus-stack-kube-scheduler.name" => job("kubeScheduler", "kube-scheduler"),
            "kube-prometheus-stack-kube-controller-manager.name" => job("kubeControllerManager", "kube-controller-manager"),
            "kube-prometheus-stack-kube-proxy.name" => job("kubeProxy", "kube-proxy"),
            "kube-prometheus-stack.name" => name_of_chart().chars().take(50).collect::<String>().trim_end_matches('-').to_string(),
            "kube-prometheus-stack.fullname" => {
                let o = text(get(values, "fullnameOverride"));
                let full = if !o.is_empty() {
                    o
                } else if self.release.name.contains(&name_of_chart()) {
                    self.release.name.to_string()
                } else {
                    format!("{}-{}", self.release.name, name_of_chart())
                };
                full.chars().take(26).collect::<String>().trim_end_matches('-').to_string()
            }
            "kube-prometheus-stack.namespace" => {
                let o = text(get(values, "namespaceOverride"));
                if o.is_empty() { self.release.namespace.to_string() } else { o }
            }
            // Object metadata only, which the rule files do not keep.
            "kube-prometheus-stack.labels" => format!("release: {:?}", self.release.name),
            other => panic!("named template {other:?} not supported"),
        }
    }

    fn call(&self, f: &str, args: Vec<Value>) -> Value {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
        let num = |v: &Value| v.as_i64().unwrap_or_else(|| panic!("{f}: {v:?} is no number")) as usize;
        match f {
            "and" => Value::Bool(args.iter().all(truthy)),
            "or" => Value::Bool(args.iter().any(truthy)),
            "not" => Value::Bool(!truthy(&arg(0))),
            "default" => {
                if truthy(&arg(1)) { arg(1) } else { arg(0) }
            }
            "dict" => {
                let mut m = Mapping::new();
                for kv in args.chunks(2) {
                    m.insert(kv[0].clone(), kv.get(1).cloned().unwrap_or(Value::Null));
                }
                Value::Mapping(m)
            }
            "dig" => {
                let (dict, default, keys) = (&args[args.len() - 1], &args[args.len() - 2], &args[..args.len() - 2]);
                let mut v = dict;
                for k in keys {
                    match v.get(text(k).as_str()) {
                        Some(x) => v = x,
                        None => return default.clone(),
                    }
                }
                v.clone()
            }
            "hasKey" => Value::Bool(arg(0).get(text(&arg(1)).as_str()).is_some()),
            "mergeOverwrite" => {
                let mut m = arg(0).as_mapping().cloned().unwrap_or_default();
                for src in &args[1..] {
                    for (k, v) in src.as_mapping().cloned().unwrap_or_default() {
                        m.insert(k, v);
                    }
                }
                Value::Mapping(m)
            }
            "semverCompare" => Value::Bool(semver_compare(&text(&arg(0)), &text(&arg(1)))),
            "include" | "template" => s(self.named(&text(&arg(0)))),
            "printf" => {
                let mut out = text(&arg(0));
                for a in &args[1..] {
                    out = out.replacen("%s", &text(a), 1);
                }
                assert!(!out.contains('%'), "printf: only %s is supported");
                s(out)
            }
            "print" => s(args.iter().map(text).collect::<String>()),
            "trunc" => s(text(&arg(1)).chars().take(num(&arg(0))).collect::<String>()),
            "trimSuffix" => s(text(&arg(1)).strip_suffix(text(&arg(0)).as_str()).map(String::from).unwrap_or(text(&arg(1)))),
            "quote" => s(format!("{:?}", text(&arg(0)))),
            "toYaml" => s(if truthy(&arg(0)) { text(&arg(0)) } else { String::new() }),
            "indent" | "nindent" => {
                let pad = " ".repeat(num(&arg(0)));
                let body = text(&arg(1)).lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n");
                s(if f == "nindent" { format!("\n{body}") } else { body })
            }
            other => panic!("template function {other:?} not supported"),
        }
    }

    fn operand(&mut self, toks: &[Tok], i: &mut usize) -> Value {
        let t = toks[*i].clone();
        *i += 1;
        match t {
            Tok::Open => {
                let v = self.pipeline(toks, i);
                assert_eq!(toks.get(*i), Some(&Tok::Close), "unbalanced parentheses");
                *i += 1;
                v
            }
            Tok::Str(v) => s(v),
            Tok::Num(n) => Value::Number(n.into()),
            Tok::Field(path) => {
                let mut v = if path.first().is_some_and(|p| p == "Values" || p == "Capabilities" || p == "Release" || p == "Chart") {
                    self.root.clone()
                } else {
                    self.dots.last().unwrap().clone()
                };
                for p in &path {
                    v = get(&v, p).clone();
                }
                v
            }
            Tok::Var(name) => self.vars.get(&name).cloned().unwrap_or_else(|| panic!("undefined variable {name}")),
            Tok::Ident(w) if w == "true" || w == "false" => Value::Bool(w == "true"),
            Tok::Ident(w) if w == "nil" => Value::Null,
            other => panic!("unexpected {other:?} in an operand position"),
        }
    }

    fn command(&mut self, toks: &[Tok], i: &mut usize, piped: Option<Value>) -> Value {
        if let Some(Tok::Ident(f)) = toks.get(*i).cloned() {
            if !matches!(f.as_str(), "true" | "false" | "nil") {
                *i += 1;
                let mut args = Vec::new();
                while *i < toks.len() && !matches!(toks[*i], Tok::Pipe | Tok::Close) {
                    args.push(self.operand(toks, i));
                }
                args.extend(piped);
                return self.call(&f, args);
            }
        }
        let v = self.operand(toks, i);
        assert!(piped.is_none(), "a value cannot take a piped argument");
        v
    }

    fn pipeline(&mut self, toks: &[Tok], i: &mut usize) -> Value {
        let mut v = self.command(toks, i, None);
        while toks.get(*i) == Some(&Tok::Pipe) {
            *i += 1;
            v = self.command(toks, i, Some(v));
        }
        v
    }

    fn eval(&mut self, expr: &str) -> Value {
        let toks = tokens(expr);
        let mut i = 0;
        if let (Some(Tok::Var(name)), Some(Tok::Assign)) = (toks.first(), toks.get(1)) {
            i = 2;
            let v = self.pipeline(&toks, &mut i);
            self.vars.insert(name.clone(), v);
            return Value::Null;
        }
        let v = self.pipeline(&toks, &mut i);
        assert_eq!(i, toks.len(), "trailing tokens in {expr:?}");
        v
    }

    /// Renders `template`.
    pub fn render(&mut self, template: &str) -> String {
        // Each open block: (this branch renders, the block's parent renders, a branch was taken, with).
        let mut blocks: Vec<(bool, bool, bool, bool)> = Vec::new();
        let mut out = String::new();
        let active = |blocks: &Vec<(bool, bool, bool, bool)>| blocks.last().is_none_or(|b| b.0);
        for piece in lex(template) {
            match piece {
                Piece::Text(t) => {
                    if active(&blocks) {
                        out.push_str(&t);
                    }
                }
                Piece::Action(a) => {
                    let (word, rest) = a.split_once(char::is_whitespace).unwrap_or((a.as_str(), ""));
                    let on = active(&blocks);
                    if a.starts_with("/*") {
                        continue;
                    }
                    match word {
                        "if" | "with" => {
                            let v = if on { self.eval(rest) } else { Value::Null };
                            let taken = on && truthy(&v);
                            if word == "with" && taken {
                                self.dots.push(v);
                            }
                            blocks.push((taken, on, taken, word == "with" && taken));
                        }
                        "range" | "define" | "block" => panic!("{{{{ {word} }}}} not supported"),
                        "else" => {
                            let b = blocks.last_mut().expect("else outside a block");
                            assert!(rest.is_empty(), "else-if not supported");
                            if b.3 {
                                self.dots.pop();
                                b.3 = false;
                            }
                            b.0 = b.1 && !b.2;
                            b.2 = true;
                        }
                        "end" => {
                            let b = blocks.pop().expect("end without a block");
                            if b.3 {
                                self.dots.pop();
                            }
                        }
                        _ if !on => {}
                        _ if a.starts_with('`') => out.push_str(a.trim_matches('`')),
                        _ => {
                            let v = self.eval(&a);
                            out.push_str(&text(&v));
                        }
                    }
                }
            }
        }
        assert!(blocks.is_empty(), "unclosed block");
        out
    }
}
