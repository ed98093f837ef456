//! Studies: creating or loading one, its directions and user attributes, listing studies.

use super::engine::Tx;
use super::types::{Direction, StudyId, StudyInfo};
use super::{Store, StoreError, decode_json, encode_json, validate_study_name};
use serde_json::Value;
use std::collections::BTreeMap;

fn directions_text(directions: &[Direction]) -> String {
    directions
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates the study, or loads it if it exists (its directions must then match). On load,
    /// `user_attrs` only adds keys the study lacks; use [`Store::set_study_user_attr`] to change one.
    pub fn create_or_load_study(
        &self,
        name: &str,
        directions: &[Direction],
        user_attrs: &BTreeMap<String, Value>,
    ) -> Result<StudyId, StoreError> {
        if directions.is_empty() {
            return Err(StoreError::DirectionMismatch {
                path: self.db_path.clone(),
                name: name.to_string(),
                stored: String::new(),
                requested: "a study needs at least one direction".to_string(),
            });
        }
        self.write(|tx| {
            let e = |err| self.db_err(err);
            let existing = self.query_int(
                tx,
                "SELECT study_id FROM studies WHERE study_name = ?1",
                &[name.into()],
            )?;
            let study_id = match existing {
                Some(id) => {
                    let stored = self.directions_in(tx, StudyId(id))?;
                    if stored != directions {
                        return Err(StoreError::DirectionMismatch {
                            path: self.db_path.clone(),
                            name: name.to_string(),
                            stored: directions_text(&stored),
                            requested: directions_text(directions),
                        });
                    }
                    id
                }
                None => {
                    validate_study_name(name)?;
                    let id = self
                        .query_int(
                            tx,
                            "INSERT INTO studies (study_name) VALUES (?1) RETURNING study_id",
                            &[name.into()],
                        )?
                        .ok_or_else(|| self.corrupt("no id for the new study"))?;
                    for (objective, direction) in directions.iter().enumerate() {
                        tx.execute(
                            "INSERT INTO study_directions (direction, study_id, objective) \
                             VALUES (?1, ?2, ?3)",
                            &[
                                direction.as_optuna_str().into(),
                                id.into(),
                                (objective as i64).into(),
                            ],
                        )
                        .map_err(e)?;
                    }
                    id
                }
            };
            for (key, value) in user_attrs {
                tx.execute(
                    "INSERT INTO study_user_attributes (study_id, key, value_json) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (study_id, key) DO NOTHING",
                    &[
                        study_id.into(),
                        key.as_str().into(),
                        encode_json(value).into(),
                    ],
                )
                .map_err(e)?;
            }
            Ok(StudyId(study_id))
        })
    }

    /// Sets (or replaces) one study user attribute.
    pub fn set_study_user_attr(
        &self,
        study: StudyId,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
                &[study.0.into(), key.into(), encode_json(value).into()],
            )
            .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    pub(super) fn directions_in(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
    ) -> Result<Vec<Direction>, StoreError> {
        let rows = tx
            .query(
                "SELECT direction FROM study_directions WHERE study_id = ?1 ORDER BY objective",
                &[study.0.into()],
            )
            .map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|r| {
                let text = r.text(0).map_err(|e| self.db_err(e))?;
                Direction::from_optuna_str(&text)
                    .ok_or_else(|| self.corrupt(format!("study direction {text:?}")))
            })
            .collect()
    }

    fn study_user_attrs_in(
        &self,
        tx: &mut Tx<'_>,
        study: StudyId,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        let e = |err| self.db_err(err);
        let rows = tx
            .query(
                "SELECT key, value_json FROM study_user_attributes WHERE study_id = ?1",
                &[study.0.into()],
            )
            .map_err(e)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.opt_text(0).map_err(e)?.unwrap_or_default(),
                    decode_json(r.opt_text(1).map_err(e)?),
                ))
            })
            .collect()
    }

    /// All studies, by id.
    pub fn studies(&self) -> Result<Vec<StudyInfo>, StoreError> {
        self.read(|tx| {
            let e = |err| self.db_err(err);
            let rows = tx
                .query(
                    "SELECT study_id, study_name FROM studies ORDER BY study_id",
                    &[],
                )
                .map_err(e)?;
            let mut studies = Vec::with_capacity(rows.len());
            for row in rows {
                let id = StudyId(row.int(0).map_err(e)?);
                studies.push(StudyInfo {
                    id,
                    name: row.text(1).map_err(e)?,
                    directions: self.directions_in(tx, id)?,
                    user_attrs: self.study_user_attrs_in(tx, id)?,
                });
            }
            Ok(studies)
        })
    }

    /// The study of that name, if any.
    pub fn study_by_name(&self, name: &str) -> Result<Option<StudyInfo>, StoreError> {
        Ok(self.studies()?.into_iter().find(|s| s.name == name))
    }

    /// The study of that name, or an error listing the known names.
    pub fn require_study(&self, name: &str) -> Result<StudyInfo, StoreError> {
        let studies = self.studies()?;
        let known = studies
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        studies
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StoreError::StudyNotFound {
                path: self.db_path.clone(),
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                },
            })
    }
}
