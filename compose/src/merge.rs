//! Several `-c` files into one tree, as Docker's CLI merges them: later
//! files override scalars and lists, mappings merge key by key; a
//! service's ports, volumes, secrets and configs add up (the reader keeps
//! the last entry per port or target); `environment`, `labels`,
//! `networks` and `depends_on` merge by name whichever form each file uses.

use crate::yaml::{Key, Kind, Node};

/// How two values under the same key of a mapping merge.
type Rule = fn(&str, Node, Node) -> Node;

/// Merges mapping `over` into mapping `base` key by key with `rule`; any
/// other pair of values: `over` wins.
fn maps(base: Node, over: Node, rule: Rule) -> Node {
    match (base.kind, over.kind) {
        (Kind::Map(mut b), Kind::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => {
                        let old = std::mem::replace(bv, null());
                        *bv = rule(&k.name, old, v);
                    }
                    None => b.push((k, v)),
                }
            }
            Node {
                kind: Kind::Map(b),
                ..base
            }
        }
        (_, kind) => Node { kind, ..over },
    }
}

fn null() -> Node {
    Node {
        kind: Kind::Null,
        line: 0,
        file: 0,
    }
}

pub(crate) fn files(base: Node, over: Node) -> Node {
    maps(base, over, |key, old, new| match key {
        "services" => maps(old, new, |_, o, n| maps(o, n, service_key)),
        _ => deep(old, new),
    })
}

fn deep(base: Node, over: Node) -> Node {
    maps(base, over, |_, o, n| deep(o, n))
}

fn service_key(key: &str, old: Node, new: Node) -> Node {
    match key {
        "ports" | "volumes" | "secrets" | "configs" => concat(old, new),
        "environment" | "labels" => deep(as_map(old, true), as_map(new, true)),
        "networks" | "depends_on" => deep(as_map(old, false), as_map(new, false)),
        "deploy" => maps(old, new, |k, o, n| match k {
            "labels" => deep(as_map(o, true), as_map(n, true)),
            _ => deep(o, n),
        }),
        _ => deep(old, new),
    }
}

fn concat(base: Node, over: Node) -> Node {
    match (base.kind, over.kind) {
        (Kind::Seq(mut b), Kind::Seq(o)) => {
            b.extend(o);
            Node {
                kind: Kind::Seq(b),
                ..over
            }
        }
        (_, kind) => Node { kind, ..over },
    }
}

/// A `KEY=VALUE` (or bare name) list as a mapping, so two files' forms merge.
fn as_map(n: Node, split_eq: bool) -> Node {
    let Kind::Seq(items) = &n.kind else { return n };
    let mut entries: Vec<(Key, Node)> = Vec::new();
    for item in items {
        let Kind::Scalar { text, plain } = &item.kind else {
            return n.clone();
        };
        let (k, v) = match text.split_once('=').filter(|_| split_eq) {
            Some((k, v)) => (
                k.to_string(),
                Kind::Scalar {
                    text: v.to_string(),
                    plain: *plain,
                },
            ),
            None => (text.clone(), Kind::Null),
        };
        entries.retain(|(e, _)| e.name != k);
        entries.push((
            Key {
                name: k,
                line: item.line,
            },
            Node {
                kind: v,
                ..item.clone()
            },
        ));
    }
    Node {
        kind: Kind::Map(entries),
        ..n
    }
}
