//! Printing objects as a table, JSON or YAML.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `objects` in `format`; `columns` and `row` make the table.
pub(super) fn print<T: Serialize>(
    format: Format,
    objects: &[T],
    single: bool,
    columns: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let value = if single && objects.len() == 1 {
                serde_json::to_value(&objects[0])?
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Yaml => {
            let text = if single && objects.len() == 1 {
                serde_saphyr::to_string(&objects[0])?
            } else {
                serde_saphyr::to_string(
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}),
                )?
            };
            print!("{text}");
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = objects.iter().map(&row).collect();
            print!("{}", table(columns, &rows));
        }
    }
    Ok(())
}

pub(super) fn table(columns: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(text.join("   ").trim_end());
        out.push('\n');
    };
    line(columns.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Age of an object as kubectl shows it (`45s`, `3m`, `2h`, `5d`).
pub(super) fn age(
    created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> String {
    let Some(created) = created else {
        return "<unknown>".into();
    };
    let seconds = jiff::Timestamp::now()
        .duration_since(created.0)
        .as_secs()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let text = super::table(&["NAME", "PHASE"], &[vec!["a".into(), "Running".into()]]);
        assert_eq!(text, "NAME   PHASE\na      Running\n");
    }
}
