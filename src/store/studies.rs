//! Studies: creating or loading one, its directions and user attributes, listing studies.

use super::types::{Direction, StudyId, StudyInfo};
use super::{Store, StoreError, decode_json, encode_json, validate_study_name};
use rusqlite::{Connection, OptionalExtension, params};
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
        let tx = self.write_tx()?;
        let e = |err| self.sql_err(err);
        let existing: Option<i64> = tx
            .query_row(
                "SELECT study_id FROM studies WHERE study_name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        let study_id = match existing {
            Some(id) => {
                let stored = self.directions_in(&tx, StudyId(id))?;
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
                tx.execute("INSERT INTO studies (study_name) VALUES (?1)", [name])
                    .map_err(e)?;
                let id = tx.last_insert_rowid();
                for (objective, direction) in directions.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO study_directions (direction, study_id, objective) \
                         VALUES (?1, ?2, ?3)",
                        params![direction.as_optuna_str(), id, objective as i64],
                    )
                    .map_err(e)?;
                }
                id
            }
        };
        for (key, value) in user_attrs {
            tx.execute(
                "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (study_id, key) DO NOTHING",
                params![study_id, key, encode_json(value)],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(StudyId(study_id))
    }

    /// Sets (or replaces) one study user attribute.
    pub fn set_study_user_attr(
        &self,
        study: StudyId,
        key: &str,
        value: &Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (study_id, key) DO UPDATE SET value_json = excluded.value_json",
            params![study.0, key, encode_json(value)],
        )
        .map_err(|e| self.sql_err(e))?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    pub(super) fn directions_in(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<Vec<Direction>, StoreError> {
        let texts: Vec<String> = self.query_rows(
            conn,
            "SELECT direction FROM study_directions WHERE study_id = ?1 ORDER BY objective",
            [study.0],
            |r| r.get(0),
        )?;
        texts
            .iter()
            .map(|t| {
                Direction::from_optuna_str(t)
                    .ok_or_else(|| self.corrupt(format!("study direction {t:?}")))
            })
            .collect()
    }

    fn study_user_attrs_in(
        &self,
        conn: &Connection,
        study: StudyId,
    ) -> Result<BTreeMap<String, Value>, StoreError> {
        let rows: Vec<(Option<String>, Option<String>)> = self.query_rows(
            conn,
            "SELECT key, value_json FROM study_user_attributes WHERE study_id = ?1",
            [study.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k.unwrap_or_default(), decode_json(v)))
            .collect())
    }

    /// All studies, by id.
    pub fn studies(&self) -> Result<Vec<StudyInfo>, StoreError> {
        let tx = self.read_tx()?;
        let rows: Vec<(i64, String)> = self.query_rows(
            &tx,
            "SELECT study_id, study_name FROM studies ORDER BY study_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut studies = Vec::with_capacity(rows.len());
        for (id, name) in rows {
            studies.push(StudyInfo {
                id: StudyId(id),
                name,
                directions: self.directions_in(&tx, StudyId(id))?,
                user_attrs: self.study_user_attrs_in(&tx, StudyId(id))?,
            });
        }
        tx.commit().map_err(|e| self.sql_err(e))?;
        Ok(studies)
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
