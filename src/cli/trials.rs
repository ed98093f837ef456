//! `cthpo trials`: lists a study's trials as a table, JSON or CSV.

use crate::store::{StoredTrial, attrs, json_number};
use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `cthpo trials`.
#[derive(Debug, Args)]
pub struct TrialsArgs {
    /// Study name.
    pub name: String,
    /// Study database and directory.
    #[command(flatten)]
    pub place: super::StorageArgs,
    /// Print JSON (one array of trials) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (one row per trial, Optuna-style `params_` / `user_attrs_` columns).
    #[arg(long)]
    pub csv: bool,
}

/// Runs `cthpo trials`.
pub fn run(args: TrialsArgs) -> anyhow::Result<()> {
    let store = args.place.open_existing()?;
    let info = store.require_study(&args.name)?;
    let trials = store
        .trials(info.id)
        .with_context(|| format!("cannot read the trials of study {:?}", args.name))?;
    let text = if args.json {
        let list: Vec<Value> = trials.iter().map(trial_json).collect();
        serde_json::to_string_pretty(&list)? + "\n"
    } else if args.csv {
        trials_csv(&trials)
    } else if trials.is_empty() {
        format!("study {:?} has no trials yet\n", args.name)
    } else {
        trials_table(&trials)
    };
    out!("{text}");
    Ok(())
}

/// One trial as JSON: number, state, values, params (external values), attributes, curve, times.
pub(super) fn trial_json(t: &StoredTrial) -> Value {
    json!({
        "number": t.number,
        "state": t.state,
        "values": t.values.as_ref().map(|v| v.iter().map(|x| json_number(*x)).collect::<Vec<_>>()),
        "params": t.param_values().into_iter().collect::<serde_json::Map<_, _>>(),
        "user_attrs": t.user_attrs,
        "intermediate_values": t
            .intermediate_values
            .iter()
            .map(|(step, v)| (step.to_string(), json_number(*v)))
            .collect::<serde_json::Map<_, _>>(),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
        "duration_seconds": t.duration_seconds,
    })
}

/// A JSON value as a plain cell: strings unquoted, everything else as JSON text.
pub(super) fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn trials_csv(trials: &[StoredTrial]) -> String {
    let n_values = trials
        .iter()
        .filter_map(|t| t.values.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut param_names: Vec<String> = Vec::new();
    let mut attr_keys: Vec<String> = Vec::new();
    for t in trials {
        for p in &t.params {
            if !param_names.contains(&p.name) {
                param_names.push(p.name.clone());
            }
        }
        for key in t.user_attrs.keys() {
            if !attr_keys.contains(key) {
                attr_keys.push(key.clone());
            }
        }
    }
    attr_keys.sort();
    let mut header: Vec<String> = [
        "number",
        "state",
        "datetime_start",
        "datetime_complete",
        "duration_seconds",
    ]
    .map(String::from)
    .to_vec();
    header.extend((0..n_values).map(|i| format!("value_{i}")));
    header.extend(param_names.iter().map(|n| format!("params_{n}")));
    header.extend(attr_keys.iter().map(|k| format!("user_attrs_{k}")));
    let mut out = String::new();
    let mut push_row = |fields: Vec<String>| {
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    };
    push_row(header);
    for t in trials {
        let mut row = vec![
            t.number.to_string(),
            t.state.to_string(),
            t.datetime_start.clone().unwrap_or_default(),
            t.datetime_complete.clone().unwrap_or_default(),
            t.duration_seconds
                .map(|d| format!("{d:.3}"))
                .unwrap_or_default(),
        ];
        row.extend((0..n_values).map(|i| {
            t.values
                .as_ref()
                .and_then(|v| v.get(i))
                .map(|v| v.to_string())
                .unwrap_or_default()
        }));
        let values = t.param_values();
        row.extend(param_names.iter().map(|name| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| cell(v))
                .unwrap_or_default()
        }));
        row.extend(
            attr_keys
                .iter()
                .map(|k| t.user_attrs.get(k).map(cell).unwrap_or_default()),
        );
        push_row(row);
    }
    out
}

/// A number with about four significant digits, for tables.
pub(super) fn short_number(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return x.to_string();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A JSON value as a short table cell (floats to about four significant digits).
pub(super) fn short_cell(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => n.as_f64().map_or_else(String::new, short_number),
        other => cell(other),
    }
}

/// Formats seconds as e.g. `4.2s`, `12m05s`, `3h07m`.
pub(super) fn duration_text(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
    }
}

/// Formats a fraction as a percentage, or "-" when missing.
pub(super) fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// Formats objective values compactly.
pub(super) fn values_text(values: Option<&Vec<f64>>) -> String {
    match values {
        None => "-".to_string(),
        Some(v) => v
            .iter()
            .map(|x| short_number(*x))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A left-aligned text table with a header row and a rule under it.
pub(super) fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().map(|h| h.to_string()));
    out += &line(&mut widths.iter().map(|w| "-".repeat(*w)));
    for row in rows {
        out += &line(&mut row.iter().cloned());
    }
    out
}

/// `rung 1 (3 epochs), continues #4, quick scoring at ε = 0.0312` for a trial of a multi-fidelity study.
fn rung_text(t: &StoredTrial) -> Option<String> {
    let rung = t.user_attr_f64(attrs::RUNG)?;
    let epochs = t
        .user_attr_f64(attrs::RUNG_EPOCHS)
        .map_or_else(String::new, |e| format!(" ({e} epochs)"));
    let continues = t
        .user_attr_f64(attrs::CONTINUES)
        .map_or_else(String::new, |n| format!(", continues #{n}"));
    let scoring = match t.user_attr_str(attrs::SCORING) {
        Some("quick") => ", quick scoring".to_string(),
        Some("reached" | "share") => format!(
            ", quick scoring at ε = {}",
            t.user_attr_f64(attrs::RUNG_EPS)
                .map_or_else(|| "?".into(), |eps| format!("{eps:.4}"))
        ),
        _ => String::new(),
    };
    Some(format!("rung {rung}{epochs}{continues}{scoring}"))
}

fn trials_table(trials: &[StoredTrial]) -> String {
    let rows: Vec<Vec<String>> = trials
        .iter()
        .map(|t| {
            let params = t
                .param_values()
                .iter()
                .map(|(n, v)| format!("{n}={}", short_cell(v)))
                .collect::<Vec<_>>()
                .join(" ");
            let note = t
                .user_attr_str(attrs::FAILURE_REASON)
                .map(|r| format!("failed: {r}"))
                .unwrap_or(params);
            let note = match rung_text(t) {
                Some(rung) => format!("{rung}; {note}"),
                None => note,
            };
            vec![
                t.number.to_string(),
                t.state.to_string(),
                values_text(t.values.as_ref()),
                percent(t.user_attr_f64(attrs::NATURAL_ACCURACY)),
                percent(t.user_attr_f64(attrs::ADVERSARIAL_ACCURACY)),
                percent(t.user_attr_f64(attrs::CERTIFIED_ACCURACY)),
                duration_text(t.duration_seconds),
                note,
            ]
        })
        .collect();
    format_table(
        &[
            "#",
            "state",
            "values",
            "natural",
            "adversarial",
            "certified",
            "time",
            "params / failure",
        ],
        &rows,
    )
}
