//! Several `-c` files into one tree, as Docker's CLI merges them: later
//! files override scalars and lists, mappings merge key by key; a
//! service's ports, volumes, secrets and configs add up (the reader keeps
//! the last entry per port or target); `environment`, `labels`,
//! `networks` and `depends_on` merge by name whichever form each file uses.

use crate::yaml::{Key, Kind, Node};

pub(crate) fn files(mut base: Node, over: Node) -> Node {
    let (Kind::Map(b), Kind::Map(o)) = (&mut base.kind, over.kind) else {
        return base;
    };
    for (k, v) in o {
        match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
            Some((_, bv)) if k.name == "services" => {
                let old = std::mem::replace(
                    bv,
                    Node {
                        kind: Kind::Null,
                        line: 0,
                        file: 0,
                    },
                );
                *bv = by_name(old, v, service);
            }
            Some((_, bv)) => {
                let old = std::mem::replace(
                    bv,
                    Node {
                        kind: Kind::Null,
                        line: 0,
                        file: 0,
                    },
                );
                *bv = deep(old, v);
            }
            None => b.push((k, v)),
        }
    }
    base
}

fn by_name(base: Node, over: Node, each: fn(Node, Node) -> Node) -> Node {
    match (base.kind, over.kind) {
        (Kind::Map(mut b), Kind::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => {
                        let old = std::mem::replace(
                            bv,
                            Node {
                                kind: Kind::Null,
                                line: 0,
                                file: 0,
                            },
                        );
                        *bv = each(old, v);
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

fn service(base: Node, over: Node) -> Node {
    let (Kind::Map(b), Kind::Map(o)) = (&base.kind, &over.kind) else {
        return deep(base, over);
    };
    let mut b = b.clone();
    for (k, v) in o.clone() {
        let Some(pos) = b.iter().position(|(bk, _)| bk.name == k.name) else {
            b.push((k, v));
            continue;
        };
        let old = b[pos].1.clone();
        b[pos].1 = match k.name.as_str() {
            "ports" | "volumes" | "secrets" | "configs" => concat(old, v),
            "environment" | "labels" => deep(as_map(old, true), as_map(v, true)),
            "networks" | "depends_on" => deep(as_map(old, false), as_map(v, false)),
            "deploy" => deploy(old, v),
            _ => deep(old, v),
        };
    }
    Node {
        kind: Kind::Map(b),
        ..base
    }
}

fn deploy(base: Node, over: Node) -> Node {
    match (&base.kind, &over.kind) {
        (Kind::Map(b), Kind::Map(o)) => {
            let mut b = b.clone();
            for (k, v) in o.clone() {
                match b.iter().position(|(bk, _)| bk.name == k.name) {
                    Some(pos) if k.name == "labels" => {
                        let old = b[pos].1.clone();
                        b[pos].1 = deep(as_map(old, true), as_map(v, true));
                    }
                    Some(pos) => {
                        let old = b[pos].1.clone();
                        b[pos].1 = deep(old, v);
                    }
                    None => b.push((k, v)),
                }
            }
            Node {
                kind: Kind::Map(b),
                ..base
            }
        }
        _ => deep(base, over),
    }
}

fn deep(base: Node, over: Node) -> Node {
    match (base.kind, over.kind) {
        (Kind::Map(mut b), Kind::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => {
                        let old = std::mem::replace(
                            bv,
                            Node {
                                kind: Kind::Null,
                                line: 0,
                                file: 0,
                            },
                        );
                        *bv = deep(old, v);
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
