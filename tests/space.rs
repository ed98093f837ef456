//! Config spaces: every builtin space loads and feeds the trainer; YAML errors name the file,
//! the parameter and the problem; encoding round trips; overrides are range-checked.

use cthpo::space::{BUILTIN_METHODS, Config, Space, SpaceError, Value, to_json_map};
use cthpo::train::{Method, TrainConfig};
use rand::{SeedableRng, rngs::StdRng};

#[test]
fn builtin_spaces_load_and_their_configurations_train() {
    let mut rng = StdRng::seed_from_u64(0);
    let spaces = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("spaces");
    for name in BUILTIN_METHODS {
        let space = Space::builtin(name).unwrap();
        let from_file = Space::from_file(&spaces.join(format!("{name}.yaml"))).unwrap();
        assert_eq!(space, from_file);
        let method: Method = name.parse().unwrap();
        TrainConfig::from_map(method, &to_json_map(&space.default_config()))
            .unwrap_or_else(|e| panic!("{name}: default does not train: {e}"));
        for _ in 0..20 {
            let config = space.sample(&mut rng);
            TrainConfig::from_map(method, &to_json_map(&config))
                .unwrap_or_else(|e| panic!("{name}: sample does not train: {e}"));
        }
    }
    assert!(matches!(
        Space::builtin("diffai"),
        Err(SpaceError::UnknownMethod(_))
    ));
}

#[test]
fn conditions_switch_parameters_on_and_off() {
    let space = Space::builtin("ibp").unwrap();
    let default = space.default_config();
    assert!(
        !default.contains_key("weight_decay"),
        "weight_decay is only for adamw"
    );
    let config = with(&space, &default, "optimizer", Value::Str("adamw".into())).unwrap();
    assert_eq!(config["weight_decay"], Value::Float(0.01));
}

#[test]
fn encoding_round_trips() {
    let space = Space::builtin("staps").unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..50 {
        let config = space.sample(&mut rng);
        let point: Vec<f64> = space
            .encode(&config)
            .into_iter()
            .map(|v| v.unwrap_or(0.5))
            .collect();
        let decoded = space.decode(&point);
        for (key, value) in &config {
            match (value, &decoded[key]) {
                (Value::Float(a), Value::Float(b)) => {
                    assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{key}")
                }
                (a, b) => assert_eq!(a, b, "{key}"),
            }
        }
    }
}

#[test]
fn each_space_default_is_the_trainers_default_for_its_method() {
    for name in BUILTIN_METHODS {
        let method: Method = name.parse().unwrap();
        let space = Space::builtin(name).unwrap();
        let from_space =
            TrainConfig::from_map(method, &to_json_map(&space.default_config())).unwrap();
        assert_eq!(
            from_space,
            TrainConfig::defaults(method),
            "{name}: spaces/{name}.yaml and TrainConfig::defaults disagree"
        );
    }
}

/// `config` with `key` set to `value`, completed and checked against `space`.
fn with(space: &Space, config: &Config, key: &str, value: Value) -> Result<Config, SpaceError> {
    let mut values = config.clone();
    values.insert(key.into(), value);
    space.complete(&values)
}

#[test]
fn completed_values_are_range_checked() {
    let space = Space::builtin("sabr").unwrap();
    let config = space.default_config();
    let config = with(&space, &config, "pgd_steps", Value::Int(3)).unwrap();
    assert_eq!(config["pgd_steps"], Value::Int(3));
    let error = with(&space, &config, "pgd_steps", Value::Int(30))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("pgd_steps") && error.contains("outside [1, 10]"),
        "{error}"
    );
    let error = with(&space, &config, "lambda", Value::Float(0.3))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("lambda") && error.contains("subselection_ratio"),
        "{error}"
    );
    let error = with(&space, &config, "optimizer", Value::Str("sgd".into()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("sgd") && error.contains("adamw"), "{error}");
}

#[test]
fn malformed_spaces_name_the_problem() {
    let cases = [
        (
            "hyperparameters:\n  - {name: a, type: float, lower: 2, upper: 1, default: 1.5}\n",
            "must be < upper",
        ),
        (
            "hyperparameters:\n  - {name: a, type: float, lower: 0, upper: 1, log: true, default: 0.5}\n",
            "lower > 0",
        ),
        (
            "hyperparameters:\n  - {name: a, type: float, lower: 0, upper: 1, default: 3}\n",
            "outside",
        ),
        (
            "hyperparameters:\n  - {name: a, type: banana}\n",
            "unknown type",
        ),
        (
            "hyperparameters:\n  - {name: a, type: constant, value: 1}\n  - {name: a, type: constant, value: 2}\n",
            "duplicate",
        ),
        (
            "hyperparameters:\n  - {name: a, type: constant, value: 1}\nconditions:\n  - {child: a, parent: b, values: [x]}\n",
            "does not exist",
        ),
        ("hyperparameters: [\n", "space my.yaml"),
    ];
    for (text, expected) in cases {
        let error = Space::from_yaml(text, "my.yaml").unwrap_err().to_string();
        assert!(
            error.contains("my.yaml") && error.contains(expected),
            "{error}"
        );
    }
}

#[test]
fn spaces_round_trip_through_yaml() {
    for method in BUILTIN_METHODS {
        let space = Space::builtin(method).unwrap();
        let text = space.to_yaml();
        let again = Space::from_yaml(&text, "round-trip.yaml")
            .unwrap_or_else(|e| panic!("{method}: {e}\n{text}"));
        assert_eq!(again, space, "{method}:\n{text}");
    }
}

#[test]
fn config_hash_is_stable() {
    let space = Space::builtin("ibp").unwrap();
    let config = space.default_config();
    assert_eq!(
        Space::config_hash(&config),
        Space::config_hash(&config.clone())
    );
    let other = with(&space, &config, "learning_rate", Value::Float(0.001)).unwrap();
    assert_ne!(Space::config_hash(&config), Space::config_hash(&other));
}
