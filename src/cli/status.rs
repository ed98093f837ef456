//! `cthpo status`: summarises stored studies (trials by state, best configuration).

use super::trials::{
    cell, format_table, percent, short_cell, short_number, trial_json, values_text,
};
use crate::store::{self, Store, StoredTrial, StudyInfo, TrialState, attrs};
use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `cthpo status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Study to describe; without it, one line per study in the database.
    pub name: Option<String>,
    /// Study database and directory.
    #[command(flatten)]
    pub place: super::StorageArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cthpo status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let store = args.place.open_existing()?;
    let studies = match &args.name {
        Some(name) => vec![store.require_study(name)?],
        None => store.studies()?,
    };
    let mut loaded = Vec::with_capacity(studies.len());
    for info in studies {
        let trials = store
            .trials(info.id)
            .with_context(|| format!("cannot read the trials of study {:?}", info.name))?;
        loaded.push((info, trials));
    }
    if args.json {
        let list: Vec<Value> = loaded
            .iter()
            .map(|(info, trials)| summary_json(info, trials))
            .collect();
        let out = if args.name.is_some() {
            list.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(list)
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match &args.name {
        Some(_) => {
            if let Some((info, trials)) = loaded.first() {
                out!("{}", describe(&store, info, trials));
            }
        }
        None if loaded.is_empty() => {
            outln!("no studies in {}", store.location());
        }
        None => out!("{}", overview(&loaded)),
    }
    Ok(())
}

fn count(trials: &[StoredTrial], state: TrialState) -> usize {
    trials.iter().filter(|t| t.state == state).count()
}

fn directions_text(info: &StudyInfo) -> String {
    info.directions
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary_json(info: &StudyInfo, trials: &[StoredTrial]) -> Value {
    let counts: serde_json::Map<String, Value> = store::state_counts(trials)
        .into_iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    json!({
        "study": info.name,
        "directions": info.directions,
        "user_attrs": info.user_attrs,
        "trials": trials.len(),
        "states": counts,
        "best": store::best_trial(trials, &info.directions).map(trial_json),
    })
}

fn overview(studies: &[(StudyInfo, Vec<StoredTrial>)]) -> String {
    let rows: Vec<Vec<String>> = studies
        .iter()
        .map(|(info, trials)| {
            let best = store::best_trial(trials, &info.directions);
            vec![
                info.name.clone(),
                directions_text(info),
                trials.len().to_string(),
                count(trials, TrialState::Complete).to_string(),
                count(trials, TrialState::Running).to_string(),
                count(trials, TrialState::Fail).to_string(),
                count(trials, TrialState::Pruned).to_string(),
                best.map_or_else(|| "-".to_string(), |b| format!("#{}", b.number)),
                percent(best.and_then(|b| b.user_attr_f64(attrs::NATURAL_ACCURACY))),
                percent(best.and_then(|b| b.user_attr_f64(attrs::CERTIFIED_ACCURACY))),
            ]
        })
        .collect();
    format_table(
        &[
            "study",
            "directions",
            "trials",
            "complete",
            "running",
            "failed",
            "pruned",
            "best",
            "natural",
            "certified",
        ],
        &rows,
    )
}

/// Trials per rung of a multi-fidelity study (None for other studies): how many were
/// stopped there (PRUNED), completed it, or are training towards it.
fn rungs_table(trials: &[StoredTrial]) -> Option<String> {
    let mut rungs: std::collections::BTreeMap<(i64, i64), [usize; 3]> = Default::default();
    for t in trials.iter().filter(|t| !t.is_interrupted()) {
        let Some(rung) = t.user_attr_f64(attrs::RUNG) else {
            continue;
        };
        let epochs = t.user_attr_f64(attrs::RUNG_EPOCHS).unwrap_or(f64::NAN);
        let slot = match t.state {
            TrialState::Pruned => 0,
            TrialState::Complete => 1,
            TrialState::Running => 2,
            _ => continue,
        };
        rungs.entry((rung as i64, epochs as i64)).or_default()[slot] += 1;
    }
    if rungs.is_empty() {
        return None;
    }
    let rows: Vec<Vec<String>> = rungs
        .into_iter()
        .map(|((rung, epochs), counts)| {
            let mut row = vec![rung.to_string(), epochs.to_string()];
            row.extend(counts.iter().map(|c| c.to_string()));
            row
        })
        .collect();
    Some(format_table(
        &["rung", "epochs", "pruned", "complete", "running"],
        &rows,
    ))
}

fn describe(store: &Store, info: &StudyInfo, trials: &[StoredTrial]) -> String {
    let mut out = format!("study       {}\n", info.name);
    out += &format!("database    {}\n", store.location());
    out += &format!("directions  {}\n", directions_text(info));
    for (key, value) in &info.user_attrs {
        out += &format!("  {key}: {}\n", cell(value));
    }
    out += "\n";
    let rows: Vec<Vec<String>> = store::state_counts(trials)
        .into_iter()
        .filter(|(s, n)| *n > 0 || *s != TrialState::Waiting)
        .map(|(s, n)| vec![s.to_string(), n.to_string()])
        .chain([vec!["total".to_string(), trials.len().to_string()]])
        .collect();
    out += &format_table(&["state", "trials"], &rows);
    out += "\n";
    if let Some(table) = rungs_table(trials) {
        out += &table;
        out += "\n";
    }
    let complete: Vec<&StoredTrial> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .collect();
    if complete.iter().any(|t| t.constraints().is_some()) {
        let feasible = complete.iter().filter(|t| t.is_feasible()).count();
        out += &format!(
            "feasible    {feasible} of {} complete trials meet the constraints\n",
            complete.len()
        );
    }
    let Some(best) = store::best_trial(trials, &info.directions) else {
        out += if complete.is_empty() {
            "no completed trial yet\n"
        } else {
            "no feasible trial yet\n"
        };
        return out;
    };
    out += &format!("best trial  #{}\n", best.number);
    out += &format!("values      {}\n", values_text(best.values.as_ref()));
    if let Some(objective) = best.user_attr_f64(attrs::OBJECTIVE) {
        out += &format!("objective   {} (weighted)\n", short_number(objective));
    }
    let accuracies = [
        ("natural", attrs::NATURAL_ACCURACY),
        ("adversarial", attrs::ADVERSARIAL_ACCURACY),
        ("certified", attrs::CERTIFIED_ACCURACY),
    ];
    let rows: Vec<Vec<String>> = accuracies
        .iter()
        .map(|(label, key)| vec![label.to_string(), percent(best.user_attr_f64(key))])
        .collect();
    out += &format_table(&["accuracy", "value"], &rows);
    let rows: Vec<Vec<String>> = best
        .param_values()
        .iter()
        .map(|(name, value)| vec![name.clone(), short_cell(value)])
        .collect();
    if !rows.is_empty() {
        out += "\n";
        out += &format_table(&["param", "value"], &rows);
    }
    if let Some(path) = best.user_attr_str(attrs::CHECKPOINT_PATH) {
        out += &format!(
            "\ncheckpoint  {}\n",
            store.resolve_checkpoint_path(path).display()
        );
    }
    let running: Vec<String> = trials
        .iter()
        .filter(|t| t.state == TrialState::Running)
        .map(|t| {
            format!(
                "#{} (heartbeat {} UTC)",
                t.number,
                t.heartbeat.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if !running.is_empty() {
        out += &format!("\nrunning     {}\n", running.join(", "));
    }
    out
}
