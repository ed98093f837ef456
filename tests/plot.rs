//! Plot tests: charts of stored studies are written as decodable PNG and labelled SVG.

use cthpo::plot::{self, CERTIFIED_LABEL, CHART_SIZE, NATURAL_LABEL, TRIAL_LABEL};
use cthpo::store::{Direction, Store, StoredParam, StoredTrial, StudyInfo, TrialOutcome, attrs};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Output folder kept under `target/tmp` so the charts can be looked at after the run.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A multi-objective study whose trials trade natural against certified accuracy.
fn fill_study(store: &Store, name: &str, seed: u64, shift: f64, n: i64) {
    let study = store
        .create_or_load_study(
            name,
            &[Direction::Maximize, Direction::Maximize],
            &BTreeMap::new(),
        )
        .unwrap();
    let mut rng = Lcg(seed);
    for i in 0..n {
        let lr = 10f64.powf(-4.0 + 3.0 * rng.next());
        let params = vec![
            StoredParam::float("lr", 1e-4, 0.1, true, lr).unwrap(),
            StoredParam::int("epochs", 1, 50, false, 1 + (rng.next() * 49.0) as i64).unwrap(),
            StoredParam::categorical(
                "optimizer",
                &["sgd", "adam"],
                ["sgd", "adam"][i as usize % 2],
            )
            .unwrap(),
        ];
        let t = store.start_trial(study, &params).unwrap();
        if i % 7 == 5 {
            store
                .finish_trial(
                    &t,
                    &TrialOutcome::Fail {
                        reason: "diverged".into(),
                    },
                )
                .unwrap();
            continue;
        }
        let trade = rng.next();
        let quality = 0.75 + 0.2 * rng.next();
        let natural = (0.80 + 0.18 * trade) * quality + shift;
        let certified = (0.75 - 0.45 * trade) * quality + shift;
        let adversarial = (natural + certified) / 2.0;
        for (key, value) in [
            (attrs::NATURAL_ACCURACY, natural),
            (attrs::CERTIFIED_ACCURACY, certified),
            (attrs::ADVERSARIAL_ACCURACY, adversarial),
            (attrs::OBJECTIVE, 0.3 * natural + 0.7 * certified),
        ] {
            store.set_trial_user_attr(&t, key, &json!(value)).unwrap();
        }
        store
            .finish_trial(
                &t,
                &TrialOutcome::Complete {
                    values: vec![certified, natural],
                },
            )
            .unwrap();
    }
}

/// A study "s" of `n` trials made by [`fill_study`] in its own folder, as stored.
fn filled_study(folder: &str, seed: u64, n: i64) -> (StudyInfo, Vec<StoredTrial>) {
    let store = Store::open(out_dir(folder)).unwrap();
    fill_study(&store, "s", seed, 0.0, n);
    let info = store.require_study("s").unwrap();
    let trials = store.trials(info.id).unwrap();
    (info, trials)
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 1000, "{} is too small", path.display());
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Counts pixels that are neither white nor near-white (i.e. something was drawn).
fn png_has_ink(path: &Path) -> bool {
    // A mostly blank 1024x768 PNG compresses to a few kB; charts with text and points do not.
    std::fs::metadata(path).unwrap().len() > 20_000
}

#[test]
fn charts_are_written_for_one_and_several_studies() {
    let dir = out_dir("plot-studies");
    let store = Store::open(&dir).unwrap();
    fill_study(&store, "mnist-sabr", 7, 0.0, 40);
    fill_study(&store, "mnist-ibp", 11, -0.06, 30);
    let empty = store
        .create_or_load_study("empty", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    let _ = empty;

    let plots = dir.join("plots");
    let names: Vec<String> = ["mnist-sabr", "mnist-ibp", "empty"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let summary = plot::plot_studies(&store, &names, &plots).unwrap();
    let expected: Vec<PathBuf> = [
        "mnist-sabr-pareto",
        "mnist-sabr-history",
        "mnist-ibp-pareto",
        "mnist-ibp-history",
        "comparison-pareto",
    ]
    .iter()
    .flat_map(|s| {
        [
            plots.join(format!("{s}.png")),
            plots.join(format!("{s}.svg")),
        ]
    })
    .collect();
    assert_eq!(summary.files, expected);
    // The empty study has nothing to draw; it is reported, not an error.
    assert_eq!(summary.skipped.len(), 2, "{:?}", summary.skipped);
    assert!(summary.skipped.iter().all(|s| s.contains("empty")));

    for file in &summary.files {
        if file.extension().unwrap() == "png" {
            assert_eq!(png_size(file), CHART_SIZE, "{}", file.display());
            assert!(png_has_ink(file), "{} looks blank", file.display());
        } else {
            let svg = std::fs::read_to_string(file).unwrap();
            assert!(svg.starts_with("<svg"), "{}", file.display());
            let name = file.file_name().unwrap().to_str().unwrap();
            if name.contains("pareto") {
                assert!(svg.contains(NATURAL_LABEL), "{name} lacks the x label");
                assert!(svg.contains(CERTIFIED_LABEL), "{name} lacks the y label");
            } else {
                assert!(svg.contains(TRIAL_LABEL), "{name} lacks the x label");
                assert!(
                    svg.contains("weighted objective"),
                    "{name} lacks the y label"
                );
                assert!(svg.contains("failed trial"), "{name} lacks the legend");
            }
        }
    }
    let comparison = std::fs::read_to_string(plots.join("comparison-pareto.svg")).unwrap();
    assert!(comparison.contains("mnist-sabr") && comparison.contains("mnist-ibp"));
    let single = std::fs::read_to_string(plots.join("mnist-sabr-pareto.svg")).unwrap();
    assert!(single.contains("Pareto front") && single.contains("best (trial #"));
}

#[test]
fn front_is_the_non_dominated_staircase() {
    let points = [
        (0, 0.90, 0.50),
        (1, 0.80, 0.60),
        (2, 0.85, 0.55),
        (3, 0.70, 0.55), // dominated by 1
        (4, 0.95, 0.20),
        (5, 0.80, 0.40), // dominated by 1
        (6, 0.99, 0.99), // dominates all, but infeasible
    ]
    .map(|(number, natural, certified)| plot::AccuracyPoint {
        number,
        natural,
        certified,
        feasible: number != 6,
    });
    let front: Vec<i64> = plot::accuracy_front(&points)
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(front, vec![1, 2, 0, 4]);
}

#[test]
fn staircase_joins_the_front_by_its_corners() {
    let front =
        [(0, 0.8, 0.6), (1, 0.9, 0.5)].map(|(number, natural, certified)| plot::AccuracyPoint {
            number,
            natural,
            certified,
            feasible: true,
        });
    assert_eq!(
        plot::staircase(&front),
        vec![(0.8, 0.6), (0.8, 0.5), (0.9, 0.5)]
    );
}

#[test]
fn accuracy_points_are_the_complete_trials_with_both_accuracies() {
    let (_, trials) = filled_study("plot-data-points", 5, 12);
    let points = plot::accuracy_points(&trials);
    // Of 12 trials, number 5 fails (i % 7 == 5).
    let numbers: Vec<i64> = points.iter().map(|p| p.number).collect();
    assert_eq!(numbers, (0..12).filter(|&i| i != 5).collect::<Vec<_>>());
    for (point, trial) in points.iter().zip(trials.iter().filter(|t| t.number != 5)) {
        assert_eq!(
            Some(point.natural),
            trial.user_attr_f64(attrs::NATURAL_ACCURACY)
        );
        assert_eq!(
            Some(point.certified),
            trial.user_attr_f64(attrs::CERTIFIED_ACCURACY)
        );
    }
}

#[test]
fn history_of_a_multi_objective_study_is_its_weighted_objective() {
    let (info, trials) = filled_study("plot-data-history", 7, 9);
    let series = plot::history_series(&info, &trials);
    assert_eq!(series.direction, Direction::Maximize);
    assert!(
        series.label.starts_with("weighted objective"),
        "{}",
        series.label
    );
    assert_eq!(series.failed, vec![5]);
    let expected: Vec<(i64, f64)> = trials
        .iter()
        .filter(|t| t.number != 5)
        .map(|t| (t.number, t.user_attr_f64(attrs::OBJECTIVE).unwrap()))
        .collect();
    assert_eq!(series.points, expected);

    // The running best never gets worse and ends at the last trial with the best value.
    let line = plot::best_so_far(&series, 8);
    let best = expected.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    assert_eq!(line.last(), Some(&(8.0, best)));
    assert!(
        line.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
    );
}

#[test]
fn history_of_a_single_objective_study_is_its_value() {
    let dir = out_dir("plot-data-history-single");
    let store = Store::open(&dir).unwrap();
    let study = store
        .create_or_load_study("m", &[Direction::Minimize], &BTreeMap::new())
        .unwrap();
    for value in [3.0, f64::INFINITY, 1.0, 2.0] {
        let t = store.start_trial(study, &[]).unwrap();
        store
            .finish_trial(
                &t,
                &TrialOutcome::Complete {
                    values: vec![value],
                },
            )
            .unwrap();
    }
    let info = store.require_study("m").unwrap();
    let series = plot::history_series(&info, &store.trials(study).unwrap());
    assert_eq!(series.label, "objective (lower is better)");
    // Infinite values have no place on the axis.
    assert_eq!(series.points, vec![(0, 3.0), (2, 1.0), (3, 2.0)]);
    assert_eq!(
        plot::best_so_far(&series, 3),
        vec![(0.0, 3.0), (2.0, 3.0), (2.0, 1.0), (3.0, 1.0)]
    );
}

#[test]
fn unusable_output_folder_is_a_clear_error() {
    let dir = out_dir("plot-bad-out");
    let store = Store::open(&dir).unwrap();
    fill_study(&store, "s", 3, 0.0, 5);
    let blocker = dir.join("not-a-folder");
    std::fs::write(&blocker, b"file").unwrap();
    let err = plot::plot_studies(&store, &["s".to_string()], &blocker.join("plots")).unwrap_err();
    assert!(err.to_string().contains("not-a-folder"), "{err}");
    let err = plot::plot_studies(&store, &["nope".to_string()], &dir).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn plot_command_writes_the_charts() {
    let dir = out_dir("plot-cli");
    {
        let store = Store::open(&dir).unwrap();
        fill_study(&store, "a", 5, 0.0, 12);
        fill_study(&store, "b", 9, 0.02, 12);
    }
    let out = dir.join("charts");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args([
            "plot",
            "a",
            "b",
            "--dir",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Vec<PathBuf> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(listed.len(), 10);
    assert!(listed.contains(&out.join("comparison-pareto.png")));
    for file in &listed {
        assert!(
            std::fs::metadata(file).unwrap().len() > 0,
            "{}",
            file.display()
        );
    }
    // Default output folder is <dir>/plots.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cthpo"))
        .args(["plot", "a", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        png_size(&dir.join("plots").join("a-pareto.png")),
        CHART_SIZE
    );
}

#[test]
fn pareto_chart_adds_the_test_split_front_of_evaluated_trials() {
    let dir = out_dir("plot-test-front");
    let store = Store::open(&dir).unwrap();
    fill_study(&store, "evaluated", 7, 0.0, 16);
    fill_study(&store, "plain", 7, 0.0, 16);
    let info = store.require_study("evaluated").unwrap();
    let trials = store.trials(info.id).unwrap();
    // `cthpo evaluate`'s attribute on three completed trials: test accuracies a little below
    // the validation ones.
    let evaluated: Vec<&StoredTrial> = trials
        .iter()
        .filter(|t| t.user_attr_f64(attrs::NATURAL_ACCURACY).is_some())
        .take(3)
        .collect();
    for t in &evaluated {
        let natural = t.user_attr_f64(attrs::NATURAL_ACCURACY).unwrap() - 0.03;
        let certified = t.user_attr_f64(attrs::CERTIFIED_ACCURACY).unwrap() - 0.05;
        let value = json!({"trial": t.number, "natural_accuracy": natural,
                           "certified_accuracy": certified, "adversarial_accuracy": certified});
        store
            .set_finished_trial_user_attr(t.trial_id, attrs::TEST_EVALUATION, &value)
            .unwrap();
    }
    let trials = store.trials(info.id).unwrap();
    let test_points = plot::test_accuracy_points(&trials);
    let numbers: Vec<i64> = test_points.iter().map(|p| p.number).collect();
    assert_eq!(
        numbers,
        evaluated.iter().map(|t| t.number).collect::<Vec<_>>()
    );
    for (point, t) in test_points.iter().zip(&evaluated) {
        let natural = t.user_attr_f64(attrs::NATURAL_ACCURACY).unwrap() - 0.03;
        assert_eq!(point.natural, natural);
    }

    let plots = dir.join("plots");
    let names = vec!["evaluated".to_string(), "plain".to_string()];
    plot::plot_studies(&store, &names, &plots).unwrap();
    let with_test = std::fs::read_to_string(plots.join("evaluated-pareto.svg")).unwrap();
    let without = std::fs::read_to_string(plots.join("plain-pareto.svg")).unwrap();
    assert!(with_test.contains("test split front"), "no test legend");
    assert!(with_test.contains("Pareto front (validation)"));
    assert!(with_test.contains("validation and test"), "title");
    assert!(!without.contains("test split"));
    // The same trials (same seed): the evaluated study's chart draws the test points and a
    // link per evaluated trial on top of everything the plain one draws.
    let marks = |svg: &str| svg.matches("<circle").count();
    assert!(
        marks(&with_test) >= marks(&without) + evaluated.len(),
        "{} marks with the test split, {} without",
        marks(&with_test),
        marks(&without)
    );
    assert!(with_test.matches("<polyline").count() >= without.matches("<polyline").count() + 3);
}
