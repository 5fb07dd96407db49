//! The graph written out: a self-contained HTML page (inline SVG and CSS, no script, nothing
//! fetched), Graphviz dot, Grafana Node Graph frames (JSON) and a dependency CSV like Azure
//! Migrate's export.

use std::fmt::Write as _;

use super::graph::{Edge, Graph, NodeKind};
use super::layout::{self, Layout};
use super::model::Traffic;

/// What the page's header says besides the graph.
pub struct Caption {
    pub since: String,
    pub until: String,
    pub source: String,
    pub records: u64,
    pub skipped: String,
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The label of an edge, as drawn: links, bytes each way (from the client's side: ↑ sent,
/// ↓ received), mean response time, failed attempts.
pub fn edge_label(e: &Edge) -> String {
    let t = &e.traffic;
    let mut parts = Vec::new();
    if t.established > 0 || t.live > 0 || t.failed == 0 {
        parts.push(format!(
            "{} link{}",
            thousands(t.established),
            if t.established == 1 { "" } else { "s" }
        ));
        parts.push(bytes_label(t));
    }
    if let Some(ms) = t.mean_response_ms() {
        parts.push(format!("{ms:.1} ms"));
    }
    if t.failed > 0 {
        parts.push(format!("{} failed", thousands(t.failed)));
    }
    parts.join(" · ")
}

/// Bytes each way from the client's side; "≥" where some records had no bytes, "bytes not
/// measured" where none had (UDP without the event source's flow counters).
fn bytes_label(t: &Traffic) -> String {
    if t.bytes_unknown() {
        return "bytes not measured".into();
    }
    let at_least = if t.bytes_unmeasured { "≥" } else { "" };
    format!(
        "↑{at_least}{} B ↓{at_least}{} B",
        thousands(t.bytes_sent),
        thousands(t.bytes_received)
    )
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters, an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const STYLE: &str = "
body{font:13px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #d0d7de}
h1{font-size:18px;margin:0 0 4px}
header p{margin:0;color:#57606a}
.legend{margin-top:6px;color:#57606a}
.legend span{margin-right:18px}
svg{display:block;margin:0}
.machine rect{fill:#fff;stroke:#8c959f;stroke-width:1.2;rx:8}
.machine.other rect{fill:#f0f3f6;stroke-dasharray:4 3}
.machine-label{font-weight:600;font-size:13px;fill:#1b1f24}
.node rect{fill:#ddf4ff;stroke:#54aeff;rx:5}
.node.folded rect{fill:#f6f8fa;stroke:#afb8c1}
.node.remote rect{fill:#fff8c5;stroke:#d4a72c}
.node.clients rect{fill:#dafbe1;stroke:#4ac26b}
.node.malicious rect{fill:#ffebe9;stroke:#cf222e;stroke-width:2.5}
.node-label{font-weight:600;font-size:12px;fill:#1b1f24}
.node-sub{font-size:11px;fill:#57606a}
.malicious .node-sub{fill:#cf222e;font-weight:700}
.edge path{fill:none;stroke:#6e7781;stroke-width:1.3}
.edge.failed path{stroke:#cf222e;stroke-dasharray:6 4}
.edge-label{font:11px ui-monospace,monospace;fill:#24292f}
.edge.failed .edge-label{fill:#cf222e}
.halo{fill:#f6f7f9;opacity:.9}
";

pub fn html(g: &Graph, caption: &Caption) -> String {
    let longest = g.edges.iter().map(|e| edge_label(e).chars().count()).max();
    let l = layout::layout(g, longest.unwrap_or(0));
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>depmap — dependency map</title><style>{STYLE}</style></head><body>\n<header><h1>Dependency map</h1><p>{} to {} · {} · {} machines, {} nodes, {} edges from {} records{}</p>\n<p class=\"legend\"><span>▭ blue: process</span><span>yellow: remote endpoint</span><span>green: unmonitored clients</span><span style=\"color:#cf222e\">dashed red: failed attempts only</span><span style=\"color:#cf222e\">red box: malicious remote</span><span>↑ bytes sent by the client side, ↓ received</span></p></header>\n",
        esc(&caption.since),
        esc(&caption.until),
        esc(&caption.source),
        g.machines.len(),
        g.nodes.len(),
        g.edges.len(),
        caption.records,
        if caption.skipped.is_empty() {
            String::new()
        } else {
            format!(" · skipped: {}", esc(&caption.skipped))
        }
    );
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\" viewBox=\"0 0 {:.0} {:.0}\">",
        l.width, l.height, l.width, l.height
    );
    for m in &g.machines {
        let Some(r) = l.machines.get(&m.id) else {
            continue;
        };
        let _ = writeln!(
            s,
            "<g class=\"machine{}\" data-id=\"{}\"><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/><text class=\"machine-label label\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            if m.selected { "" } else { " other" },
            esc(&m.id),
            esc(&m.id),
            r.x,
            r.y,
            r.w,
            r.h,
            r.x + layout::MACHINE_PAD,
            r.y + 18.0,
            esc(&cut(&m.name, 30))
        );
    }
    edges_svg(&mut s, g, &l);
    for n in &g.nodes {
        let Some(r) = l.nodes.get(&n.id) else {
            continue;
        };
        let sub = if n.malicious {
            format!("⚠ MALICIOUS · {}", n.subtitle)
        } else {
            n.subtitle.clone()
        };
        let _ = writeln!(
            s,
            "<g class=\"node {}{}\" data-id=\"{}\" data-machine=\"{}\"><title>{} — {}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"/><text class=\"node-label label\" x=\"{:.1}\" y=\"{:.1}\">{}</text><text class=\"node-sub\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            n.kind.name(),
            if n.malicious { " malicious" } else { "" },
            esc(&n.id),
            esc(n.machine.as_deref().unwrap_or("")),
            esc(&n.title),
            esc(&n.subtitle),
            r.x,
            r.y,
            r.w,
            r.h,
            r.x + 8.0,
            r.y + 16.0,
            esc(&cut(&n.title, 28)),
            r.x + 8.0,
            r.y + 31.0,
            esc(&cut(&sub, 32))
        );
    }
    s.push_str("</svg>\n</body></html>\n");
    s
}

fn edges_svg(s: &mut String, g: &Graph, l: &Layout) {
    for (i, e) in g.edges.iter().enumerate() {
        let (Some(from), Some(to)) = (l.nodes.get(&e.source), l.nodes.get(&e.target)) else {
            continue;
        };
        let y0 = l.edge_rows[i];
        let x0 = from.x + from.w;
        let label_end = x0 + l.gutter - 40.0;
        let (x1, y1) = (to.x, to.y + to.h / 2.0);
        let bend = ((x1 - label_end).abs() / 2.0).max(60.0);
        let label = edge_label(e);
        let _ = writeln!(
            s,
            "<g class=\"edge{}\" data-source=\"{}\" data-target=\"{}\" data-port=\"{}\" data-links=\"{}\" data-failed=\"{}\" data-bytes-sent=\"{}\" data-bytes-received=\"{}\"><title>{} → {} port {}/{}</title><path d=\"M{x0:.1},{y0:.1} L{label_end:.1},{y0:.1} C{:.1},{y0:.1} {:.1},{y1:.1} {x1:.1},{y1:.1}\"/><rect class=\"halo\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\"/><text class=\"edge-label label\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            if e.failed_only() { " failed" } else { "" },
            esc(&e.source),
            esc(&e.target),
            e.port,
            e.traffic.established,
            e.traffic.failed,
            e.traffic.bytes_sent,
            e.traffic.bytes_received,
            esc(&e.source),
            esc(&e.target),
            e.port,
            esc(&e.protocol),
            label_end + bend,
            x1 - bend,
            x0 + 6.0,
            y0 - 11.0,
            label.chars().count() as f64 * layout::LABEL_CHAR_W,
            x0 + 8.0,
            y0 - 1.0,
            esc(&label)
        );
    }
}

pub fn dot(g: &Graph) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut s = String::from(
        "digraph depmap {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ddf4ff\", fontname=\"sans-serif\"];\n  edge [fontname=\"monospace\", fontsize=10];\n",
    );
    for m in &g.machines {
        let _ = writeln!(
            s,
            "  subgraph {} {{\n    label={};",
            q(&format!("cluster_{}", m.id)),
            q(&m.name)
        );
        for n in g
            .nodes
            .iter()
            .filter(|n| n.machine.as_deref() == Some(&m.id))
        {
            let _ = writeln!(
                s,
                "    {} [label={}];",
                q(&n.id),
                q(&format!("{}\n{}", n.title, n.subtitle))
            );
        }
        s.push_str("  }\n");
    }
    for n in g.nodes.iter().filter(|n| n.machine.is_none()) {
        let colour = match (n.malicious, n.kind) {
            (true, _) => "#ffebe9\", color=\"#cf222e\", penwidth=2.5",
            (_, NodeKind::Clients) => "#dafbe1",
            _ => "#fff8c5",
        };
        let title = if n.malicious {
            format!("MALICIOUS {}", n.title)
        } else {
            n.title.clone()
        };
        let _ = writeln!(
            s,
            "  {} [label={}, fillcolor=\"{colour}\"];",
            q(&n.id),
            q(&format!("{title}\n{}", n.subtitle))
        );
    }
    for e in &g.edges {
        let style = if e.failed_only() {
            ", style=dashed, color=\"#cf222e\", fontcolor=\"#cf222e\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} -> {} [label={}{style}];",
            q(&e.source),
            q(&e.target),
            q(&edge_label(e))
        );
    }
    s.push_str("}\n");
    s
}

/// Grafana Node Graph frames: `nodes` (id, title, subtitle, mainstat, secondarystat, arc__*,
/// detail__*) and `edges` (id, source, target, mainstat, secondarystat).
pub fn json(g: &Graph) -> String {
    use serde_json::json;
    let machine_name = |id: &str| g.machine_name(id);
    let nodes: Vec<_> = g
        .nodes
        .iter()
        .map(|n| {
            let (links, bytes) = g
                .edges
                .iter()
                .filter(|e| e.source == n.id || e.target == n.id)
                .fold((0i64, 0i64), |(l, b), e| {
                    (
                        l + e.traffic.established,
                        b + e.traffic.bytes_sent + e.traffic.bytes_received,
                    )
                });
            json!({
                "id": n.id,
                "title": n.title,
                "subtitle": match &n.machine {
                    Some(m) => format!("{} {}", machine_name(m), n.subtitle).trim().to_string(),
                    None => n.subtitle.clone(),
                },
                "mainstat": format!("{} links", thousands(links)),
                "secondarystat": format!("{} B", thousands(bytes)),
                "arc__process": if n.kind == NodeKind::Process { 1.0 } else { 0.0 },
                "arc__remote": if n.kind == NodeKind::Remote && !n.malicious { 1.0 } else { 0.0 },
                "arc__clients": if n.kind == NodeKind::Clients { 1.0 } else { 0.0 },
                "arc__malicious": if n.malicious { 1.0 } else { 0.0 },
                "arc__other": if n.kind == NodeKind::Folded { 1.0 } else { 0.0 },
                "detail__kind": n.kind.name(),
                "detail__machine": n.machine,
            })
        })
        .collect();
    let edges: Vec<_> = g
        .edges
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "source": e.source,
                "target": e.target,
                "mainstat": format!("{} links", thousands(e.traffic.established)),
                "secondarystat": bytes_label(&e.traffic),
                "detail__port": e.port,
                "detail__protocol": e.protocol,
                "detail__links_failed": e.traffic.failed,
                "detail__mean_response_ms": e.traffic.mean_response_ms(),
            })
        })
        .collect();
    let mut out =
        serde_json::to_string_pretty(&json!({"nodes": nodes, "edges": edges})).unwrap_or_default();
    out.push('\n');
    out
}

/// Columns of the dependency CSV.
pub const CSV_HEADER: [&str; 14] = [
    "SourceMachine",
    "SourceProcess",
    "DestinationMachineOrIp",
    "DestinationProcess",
    "DestinationPort",
    "Protocol",
    "LinksEstablished",
    "LinksFailed",
    "BytesSent",
    "BytesReceived",
    "MeanResponseTimeMs",
    "FirstSeen",
    "LastSeen",
    "Malicious",
];

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn csv(g: &Graph) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    let machine_name = |id: &str| g.machine_name(id);
    for e in &g.edges {
        let (Some(s), Some(t)) = (g.node(&e.source), g.node(&e.target)) else {
            continue;
        };
        let (source_machine, source_process) = match &s.machine {
            Some(m) => (machine_name(m), s.title.clone()),
            None => (s.subtitle.clone(), s.title.clone()),
        };
        let (dest, dest_process) = match &t.machine {
            Some(m) => (machine_name(m), t.title.clone()),
            None => (
                t.subtitle
                    .rsplit_once(':')
                    .map_or(t.subtitle.clone(), |(ip, _)| {
                        ip.trim_matches(['[', ']']).to_string()
                    }),
                String::new(),
            ),
        };
        let tr = &e.traffic;
        w.write_record([
            source_machine,
            source_process,
            dest,
            dest_process,
            e.port.to_string(),
            e.protocol.clone(),
            tr.established.to_string(),
            tr.failed.to_string(),
            // Empty where no byte was measured.
            if tr.bytes_unknown() {
                String::new()
            } else {
                tr.bytes_sent.to_string()
            },
            if tr.bytes_unknown() {
                String::new()
            } else {
                tr.bytes_received.to_string()
            },
            tr.mean_response_ms()
                .map(|m| format!("{m:.3}"))
                .unwrap_or_default(),
            tr.first.map(rfc3339).unwrap_or_default(),
            tr.last.map(rfc3339).unwrap_or_default(),
            (s.malicious || t.malicious).to_string(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmeasured_bytes_are_said_so() {
        let mut t = Traffic {
            bytes_sent: 1_500,
            bytes_received: 20,
            ..Default::default()
        };
        assert_eq!(bytes_label(&t), "↑1,500 B ↓20 B");
        // Some of its records had null bytes: a lower bound.
        t.bytes_unmeasured = true;
        assert_eq!(bytes_label(&t), "↑≥1,500 B ↓≥20 B");
        // None measured.
        let none = Traffic {
            bytes_unmeasured: true,
            ..Default::default()
        };
        assert_eq!(bytes_label(&none), "bytes not measured");
    }
}
