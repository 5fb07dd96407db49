//! Where everything goes in the picture: a layered layout of our own. Columns are ranks —
//! client groups first, then machines by how far down the dependency chain they are (a machine
//! is one column right of the furthest machine calling it), then remote endpoints; machines of
//! one rank stack in their column, each a box holding its processes.
//!
//! Labels cannot overlap by construction: every edge's label sits in the gutter right of its
//! source node, on a row of its own inside that node's height (a node is as tall as its
//! outgoing edges need), and nodes of a column never overlap. The crates looked at: layout-rs
//! 0.1.3 (pure Rust, Graphviz-like) "lacks nested graphs" by its own documentation, so no
//! machine boxes holding their processes, and puts edge labels at midpoints, where they collide
//! as soon as edges fan out; vizoxide wraps the Graphviz C library (a system dependency). This
//! rule is two hundred lines and keeps the property the test checks.

use std::collections::{BTreeMap, HashMap};

use super::graph::{Graph, NodeKind};

pub const NODE_W: f64 = 210.0;
pub const NODE_MIN_H: f64 = 40.0;
/// Height of one edge label row.
pub const ROW_H: f64 = 18.0;
/// Narrowest gutter between columns; wider when the longest edge label needs it.
pub const GUTTER_MIN: f64 = 330.0;
/// Width of one character of an edge label (11 px monospace measured ≈ 6.6 px) with a margin.
pub const LABEL_CHAR_W: f64 = 7.0;
pub const MACHINE_PAD: f64 = 12.0;
pub const MACHINE_HEADER: f64 = 26.0;
pub const NODE_GAP: f64 = 10.0;
pub const MACHINE_GAP: f64 = 24.0;
pub const MARGIN: f64 = 20.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

#[derive(Debug, Default)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub machines: HashMap<String, Rect>,
    pub nodes: HashMap<String, Rect>,
    /// Per edge (by index in the graph): where it leaves its source (the label's row).
    pub edge_rows: Vec<f64>,
    /// The gutter right of every column, where the edge labels are.
    pub gutter: f64,
}

/// `longest_label`: characters of the longest edge label (the gutter is made to hold it).
pub fn layout(g: &Graph, longest_label: usize) -> Layout {
    let gutter = GUTTER_MIN.max(longest_label as f64 * LABEL_CHAR_W + 60.0);
    let out_edges = {
        let mut n: HashMap<&str, usize> = HashMap::new();
        for e in &g.edges {
            *n.entry(e.source.as_str()).or_default() += 1;
        }
        n
    };
    let height_of = |id: &str| {
        let rows = out_edges.get(id).copied().unwrap_or(0) as f64;
        NODE_MIN_H.max(rows * ROW_H + 12.0)
    };
    let machine_of: HashMap<&str, &str> = g
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.as_str(), n.machine.as_deref()?)))
        .collect();
    let rank = machine_ranks(g, &machine_of);
    let has_clients = g.nodes.iter().any(|n| n.kind == NodeKind::Clients);
    let first_machine_col = usize::from(has_clients);
    let machine_cols = rank.values().copied().max().map_or(0, |r| r + 1);
    let remote_col = first_machine_col + machine_cols;
    let col_x = |c: usize| MARGIN + c as f64 * (NODE_W + 2.0 * MACHINE_PAD + gutter);

    let mut out = Layout {
        gutter,
        ..Layout::default()
    };
    let mut bottom = MARGIN;
    // Machines, column by column, stacked by name.
    let mut by_col: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for m in &g.machines {
        let r = rank.get(m.id.as_str()).copied().unwrap_or(0);
        by_col.entry(first_machine_col + r).or_default().push(&m.id);
    }
    for (col, machines) in &by_col {
        let mut y = MARGIN;
        for m in machines {
            let x = col_x(*col);
            let mut members: Vec<_> = g
                .nodes
                .iter()
                .filter(|n| n.machine.as_deref() == Some(*m))
                .collect();
            // Processes by name; folded and unknown last.
            members.sort_by(|a, b| (a.kind, &a.title, &a.id).cmp(&(b.kind, &b.title, &b.id)));
            let mut ny = y + MACHINE_HEADER;
            for n in &members {
                let h = height_of(&n.id);
                out.nodes.insert(
                    n.id.clone(),
                    Rect {
                        x: x + MACHINE_PAD,
                        y: ny,
                        w: NODE_W,
                        h,
                    },
                );
                ny += h + NODE_GAP;
            }
            let h = (ny - y - NODE_GAP + MACHINE_PAD).max(MACHINE_HEADER + MACHINE_PAD);
            out.machines.insert(
                m.to_string(),
                Rect {
                    x,
                    y,
                    w: NODE_W + 2.0 * MACHINE_PAD,
                    h,
                },
            );
            y += h + MACHINE_GAP;
        }
        bottom = bottom.max(y);
    }
    // Client groups left and remotes right, each in the order of what they connect to.
    for (kind, col) in [(NodeKind::Clients, 0), (NodeKind::Remote, remote_col)] {
        let mut members: Vec<(f64, &str)> = g
            .nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| {
                let ys: Vec<f64> = g
                    .edges
                    .iter()
                    .filter_map(|e| {
                        let other = if e.source == n.id {
                            &e.target
                        } else if e.target == n.id {
                            &e.source
                        } else {
                            return None;
                        };
                        out.nodes.get(other).map(|r| r.y)
                    })
                    .collect();
                let centre = if ys.is_empty() {
                    f64::MAX
                } else {
                    ys.iter().sum::<f64>() / ys.len() as f64
                };
                (centre, n.id.as_str())
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        let mut y = MARGIN + MACHINE_HEADER;
        for (_, id) in members {
            let h = height_of(id);
            out.nodes.insert(
                id.to_string(),
                Rect {
                    x: col_x(col) + MACHINE_PAD,
                    y,
                    w: NODE_W,
                    h,
                },
            );
            y += h + NODE_GAP;
        }
        bottom = bottom.max(y);
    }
    // Each edge leaves its source on a row of its own, in the order of their targets.
    let mut order: Vec<usize> = (0..g.edges.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let e = &g.edges[i];
            let ty = out.nodes.get(&e.target).map_or(0.0, |r| r.y);
            (e.source.clone(), ty)
        };
        let (sa, ya) = key(a);
        let (sb, yb) = key(b);
        sa.cmp(&sb).then(ya.total_cmp(&yb)).then(a.cmp(&b))
    });
    out.edge_rows = vec![0.0; g.edges.len()];
    let mut used: HashMap<&str, usize> = HashMap::new();
    for i in order {
        let e = &g.edges[i];
        let row = used.entry(e.source.as_str()).or_default();
        let top = out.nodes.get(&e.source).map_or(0.0, |r| r.y);
        out.edge_rows[i] = top + 6.0 + (*row as f64 + 0.5) * ROW_H;
        *row += 1;
    }
    out.width = col_x(remote_col + 1) - gutter + MARGIN;
    out.height = bottom + MARGIN;
    out
}

/// Each machine's rank: one more than the highest-ranked machine with an edge into it
/// (cycles are cut after as many rounds as there are machines).
fn machine_ranks<'a>(g: &'a Graph, machine_of: &HashMap<&str, &'a str>) -> HashMap<&'a str, usize> {
    let mut rank: HashMap<&str, usize> = g.machines.iter().map(|m| (m.id.as_str(), 0)).collect();
    let links: Vec<(&str, &str)> = g
        .edges
        .iter()
        .filter_map(|e| {
            let s = machine_of.get(e.source.as_str())?;
            let t = machine_of.get(e.target.as_str())?;
            (s != t).then_some((*s, *t))
        })
        .collect();
    for _ in 0..g.machines.len() {
        let mut changed = false;
        for (s, t) in &links {
            let want = rank.get(s).copied().unwrap_or(0) + 1;
            if let Some(r) = rank.get_mut(t)
                && *r < want
                && want < g.machines.len()
            {
                *r = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    rank
}
