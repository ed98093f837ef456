//! Progress checkpoints: the weights and training state after every epoch of a running trial,
//! so that a trial stopped mid-way (killed, Ctrl-C, a crash) continues from its last completed
//! epoch when its configuration runs again, in every fidelity mode.
//!
//! They live in `<trial dir>/progress/epoch-<k>/` (weights, sidecar and training state, as a
//! rung checkpoint). Each is written into a temporary folder, flushed to disk and renamed into
//! place, so a folder named `epoch-<k>` is always complete; the older epochs are removed once a
//! newer one is in place, and the whole `progress` folder once the trial ends other than
//! interrupted. A re-run continues only from an *interrupted* trial of the same configuration
//! whose checkpoint was trained with the same settings and lies between the epoch it starts
//! from and the epoch it trains to; anything else is stale and ignored.

use super::spec::StudySpec;
use super::trial::Segment;
use crate::model::Net;
use crate::store::{Store, StoredTrial, TrialHandle};
use crate::train::{
    Method, SIDECAR_FILE, STATE_FILE, Sidecar, TrainConfig, TrainError, TrainState, read_sidecar,
    save_checkpoint,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folder of a trial's progress checkpoints, inside its checkpoint folder.
pub const PROGRESS_DIR: &str = "progress";
/// Prefix of one epoch's progress checkpoint folder (`epoch-<k>`).
const EPOCH_PREFIX: &str = "epoch-";
/// Trial user attribute: the interrupted trial whose progress checkpoint this trial continued.
pub const RESUMED_FROM: &str = "resumed_from_trial";
/// Trial user attribute: the epoch of that checkpoint (the first epoch trained is the next).
pub const RESUMED_AT_EPOCH: &str = "resumed_at_epoch";

/// Writes the progress checkpoint of `state.epochs_done` into `trial_dir`, atomically, and
/// removes the earlier ones.
pub(super) fn save(
    trial_dir: &Path,
    net: &Net,
    sidecar: &Sidecar,
    state: &TrainState,
) -> Result<(), TrainError> {
    let root = trial_dir.join(PROGRESS_DIR);
    let epoch = state.epochs_done;
    let target = root.join(format!("{EPOCH_PREFIX}{epoch}"));
    let temporary = root.join(format!(".{EPOCH_PREFIX}{epoch}.partial"));
    let failed = |path: &Path, e: std::io::Error| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    if temporary.exists() {
        std::fs::remove_dir_all(&temporary).map_err(|e| failed(&temporary, e))?;
    }
    let mut sidecar = sidecar.clone();
    sidecar.epochs = epoch;
    save_checkpoint(&temporary, net, &sidecar)?;
    state.save(&temporary)?;
    // Flushed before the rename, so a power cut cannot leave a complete-looking folder with
    // empty files.
    for entry in std::fs::read_dir(&temporary).map_err(|e| failed(&temporary, e))? {
        let path = entry.map_err(|e| failed(&temporary, e))?.path();
        std::fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(|e| failed(&path, e))?;
    }
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| failed(&target, e))?;
    }
    std::fs::rename(&temporary, &target).map_err(|e| failed(&target, e))?;
    for (earlier, dir) in epochs(trial_dir) {
        if earlier < epoch {
            // A leftover older epoch is only disk space; the newest one is what counts.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// The complete progress checkpoints of a trial folder: (epoch, folder).
fn epochs(trial_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(trial_dir.join(PROGRESS_DIR)) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let epoch = path
                .file_name()?
                .to_str()?
                .strip_prefix(EPOCH_PREFIX)?
                .parse()
                .ok()?;
            path.join(STATE_FILE).is_file().then_some((epoch, path))
        })
        .collect()
}

/// The newest progress checkpoint of a trial folder: (epoch, folder).
pub fn latest(trial_dir: &Path) -> Option<(usize, PathBuf)> {
    epochs(trial_dir)
        .into_iter()
        .max_by_key(|(epoch, _)| *epoch)
}

/// Removes a trial folder's progress checkpoints (a missing folder is fine).
pub(super) fn remove(trial_dir: &Path) {
    // Leftovers are ignored when stale, so failing to delete them costs only disk space.
    let _ = std::fs::remove_dir_all(trial_dir.join(PROGRESS_DIR));
}

/// A progress checkpoint a starting trial continues from.
pub(super) struct Resumable {
    /// The interrupted trial that wrote it.
    pub trial: i64,
    /// Epochs it holds.
    pub epoch: usize,
    /// Its folder.
    pub dir: PathBuf,
}

/// Whether a progress checkpoint was trained with this study's settings and `config`.
fn trained_like(dir: &Path, spec: &StudySpec, method: Method, config: &TrainConfig) -> bool {
    let Ok(sidecar) = read_sidecar(&dir.join(SIDECAR_FILE)) else {
        return false;
    };
    sidecar.method == method
        && &sidecar.config == config
        && sidecar.eps == spec.eps
        && sidecar.seed == spec.seed
        && sidecar.arch.as_deref() == Some(spec.arch.as_str())
        && sidecar.dataset == spec.dataset
        && TrainState::load(dir).is_ok_and(|state| state.epochs_done == sidecar.epochs)
}

/// The newest usable progress checkpoint for the started trial `handle` (configuration
/// `values`, training `segment`): written by an earlier interrupted trial of the same
/// configuration, trained with the same settings, past the epoch the segment starts from and
/// not past the one it trains to.
pub(super) fn find(
    spec: &StudySpec,
    store: &Store,
    trials: &[StoredTrial],
    handle: &TrialHandle,
    values: &BTreeMap<String, serde_json::Value>,
    segment: &Segment,
) -> Option<Resumable> {
    let this = trials.iter().find(|t| t.trial_id == handle.trial_id)?;
    let method: Method = spec.method.parse().ok()?;
    let config = TrainConfig::from_map(method, values).ok()?;
    let start = match &segment.continue_from {
        None => 0,
        Some(dir) => read_sidecar(&dir.join(SIDECAR_FILE)).ok()?.epochs,
    };
    trials
        .iter()
        .filter(|t| t.number < this.number && t.is_interrupted() && t.params == this.params)
        .filter_map(|t| {
            let (epoch, dir) = latest(&store.checkpoint_dir(&spec.name, t.number))?;
            (start < epoch && epoch <= segment.until).then_some(Resumable {
                trial: t.number,
                epoch,
                dir,
            })
        })
        .filter(|found| trained_like(&found.dir, spec, method, &config))
        .max_by_key(|found| (found.epoch, found.trial))
}

/// After the trial `handle` ended other than interrupted, having trained to epoch `until`:
/// removes the progress checkpoints of the interrupted trials of its configuration that it
/// made stale (none of them past `until`).
pub(super) fn clear_after(
    spec: &StudySpec,
    store: &Store,
    trials: &[StoredTrial],
    handle: &TrialHandle,
    until: usize,
) {
    let Some(this) = trials.iter().find(|t| t.trial_id == handle.trial_id) else {
        return;
    };
    for trial in trials
        .iter()
        .filter(|t| t.number < this.number && t.is_interrupted() && t.params == this.params)
    {
        let dir = store.checkpoint_dir(&spec.name, trial.number);
        if latest(&dir).is_some_and(|(epoch, _)| epoch <= until) {
            remove(&dir);
        }
    }
}
