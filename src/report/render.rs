//! A small document model rendered two ways: Markdown (`report.md`, figures as linked PNG files)
//! and one self-contained HTML page (`report.html`, figures inlined as SVG). One source of
//! content, so the two reports never disagree.

/// One block of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Heading(u8, String),
    Paragraph(String),
    Bullets(Vec<String>),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A figure: caption, PNG file name (relative to the report) and the SVG markup.
    Figure {
        caption: String,
        png: String,
        svg: String,
    },
    /// Detail folded under a one-line summary (`<details>` in both renderings: GitHub and
    /// most Markdown viewers unfold it on a click).
    Details {
        summary: String,
        blocks: Vec<Block>,
    },
}

/// A column of a table built from rows of one type: its header and how a row shows in it.
pub(crate) struct Column<'a, R> {
    header: String,
    cell: Box<dyn Fn(&R) -> String + 'a>,
}

impl<'a, R> Column<'a, R> {
    pub(crate) fn new(header: impl Into<String>, cell: impl Fn(&R) -> String + 'a) -> Self {
        Self {
            header: header.into(),
            cell: Box::new(cell),
        }
    }
}

/// A table cell with nothing to show.
pub(crate) fn dash() -> String {
    "-".to_string()
}

/// The table of `rows` in `columns`: a line per row, the header and every cell from the same
/// list, so they cannot fall out of step (a column left out is left out of both).
pub(crate) fn table<'r, R: 'r>(
    rows: impl IntoIterator<Item = &'r R>,
    columns: &[Column<R>],
) -> Block {
    Block::Table {
        header: columns.iter().map(|c| c.header.clone()).collect(),
        rows: rows
            .into_iter()
            .map(|r| columns.iter().map(|c| (c.cell)(r)).collect())
            .collect(),
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown rendering.
pub fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    markdown_into(&mut out, blocks);
    out
}

fn markdown_into(out: &mut String, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Heading(level, text) => {
                out.push_str(&format!("{} {text}\n\n", "#".repeat(*level as usize)));
            }
            Block::Paragraph(text) => out.push_str(&format!("{text}\n\n")),
            Block::Bullets(items) => {
                for i in items {
                    out.push_str(&format!("- {i}\n"));
                }
                out.push('\n');
            }
            Block::Table { header, rows } => {
                out.push_str(&format!(
                    "| {} |\n",
                    header
                        .iter()
                        .map(|h| md_cell(h))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ));
                out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
                for r in rows {
                    out.push_str(&format!(
                        "| {} |\n",
                        r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
                    ));
                }
                out.push('\n');
            }
            Block::Figure { caption, png, .. } => {
                out.push_str(&format!("![{caption}]({png})\n\n*{caption}*\n\n"))
            }
            Block::Details { summary, blocks } => {
                out.push_str(&format!(
                    "<details><summary>{}</summary>\n\n",
                    escape(summary)
                ));
                markdown_into(out, blocks);
                out.push_str("</details>\n\n");
            }
        }
    }
}

/// HTML-escapes text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #eee}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}\
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}\
figure{margin:1.5em 0}summary{cursor:pointer;color:#0550ae}figcaption{color:#555;font-style:italic}svg{max-width:100%;height:auto}li{margin:.25em 0}";

/// Self-contained HTML rendering.
pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    );
    html_into(&mut out, blocks);
    out.push_str("</body></html>\n");
    out
}

fn html_into(out: &mut String, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Heading(level, text) => {
                out.push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)))
            }
            Block::Paragraph(text) => out.push_str(&format!("<p>{}</p>\n", escape(text))),
            Block::Bullets(items) => {
                out.push_str("<ul>\n");
                for i in items {
                    out.push_str(&format!("<li>{}</li>\n", escape(i)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table { header, rows } => {
                out.push_str("<table><thead><tr>");
                for h in header {
                    out.push_str(&format!("<th>{}</th>", escape(h)));
                }
                out.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        out.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::Figure { caption, svg, .. } => {
                // The SVG's XML declaration is not allowed inside HTML.
                let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
                out.push_str(&format!(
                    "<figure>{body}<figcaption>{}</figcaption></figure>\n",
                    escape(caption)
                ));
            }
            Block::Details { summary, blocks } => {
                out.push_str(&format!(
                    "<details><summary>{}</summary>\n",
                    escape(summary)
                ));
                html_into(out, blocks);
                out.push_str("</details>\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table from typed rows: a header per column, a line per row in the columns' order,
    /// and a column left out leaves both its header and its cells out.
    #[test]
    fn tables_take_header_and_cells_from_one_list() {
        let rows = [(1, "a"), (2, "b")];
        let mut columns = vec![Column::new("n", |r: &(i32, &str)| r.0.to_string())];
        assert_eq!(
            table(&rows, &columns),
            Block::Table {
                header: vec!["n".into()],
                rows: vec![vec!["1".into()], vec!["2".into()]],
            }
        );
        columns.push(Column::new("name", |r: &(i32, &str)| r.1.to_uppercase()));
        let Block::Table { header, rows } = table(&rows, &columns) else {
            panic!("not a table")
        };
        assert_eq!(header, ["n", "name"]);
        assert_eq!(rows, [["1", "A"], ["2", "B"]]);
    }

    #[test]
    fn both_renderings_carry_the_same_content() {
        let blocks = vec![
            Block::Heading(1, "R".into()),
            Block::Bullets(vec!["a < b".into()]),
            Block::Table {
                header: vec!["x".into(), "y".into()],
                rows: vec![vec!["1|2".into(), "3".into()]],
            },
            Block::Figure {
                caption: "c".into(),
                png: "f.png".into(),
                svg: "<?xml version=\"1.0\"?><svg></svg>".into(),
            },
            Block::Details {
                summary: "more".into(),
                blocks: vec![Block::Bullets(vec!["folded".into()])],
            },
        ];
        let md = markdown(&blocks);
        assert!(
            md.contains("# R")
                && md.contains("- a < b")
                && md.contains("| 1\\|2 | 3 |")
                && md.contains("![c](f.png)")
                && md.contains("<details><summary>more</summary>\n\n- folded\n")
        );
        let h = html("R", &blocks);
        assert!(
            h.contains("<li>a &lt; b</li>")
                && h.contains("<td>1|2</td>")
                && h.contains("<figure><svg></svg>")
                && h.contains("<details><summary>more</summary>\n<ul>\n<li>folded</li>")
        );
        assert!(!h.contains("<?xml"));
    }
}
