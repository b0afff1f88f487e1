//! Persistent rooms in the core's database: their configuration, subject and affiliations
//! (XEP-0045 §10.2 `muc#roomconfig_persistentroom`). Every SQL statement of the service is in
//! this file. Temporary rooms, occupants and history are never stored.

use crate::core::storage::{params, Db, SqlError};

use super::room::{Affiliation, RoomConfig, Whois};

/// The tables, one entry of [`crate::core::storage::MIGRATIONS`].
pub const SCHEMA: &str = "CREATE TABLE muc_rooms (
        service TEXT NOT NULL,
        room TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        public INTEGER NOT NULL,
        members_only INTEGER NOT NULL,
        moderated INTEGER NOT NULL,
        password TEXT,
        max_users INTEGER NOT NULL,
        whois TEXT NOT NULL,
        history_length INTEGER NOT NULL,
        subject TEXT,
        subject_by TEXT,
        PRIMARY KEY (service, room)
    );
    CREATE TABLE muc_affiliations (
        service TEXT NOT NULL,
        room TEXT NOT NULL,
        jid TEXT NOT NULL,
        affiliation TEXT NOT NULL,
        PRIMARY KEY (service, room, jid)
    );";

/// What is kept of a persistent room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    /// The room's localpart.
    pub room: String,
    /// The room's configuration as its owner last submitted it.
    pub config: RoomConfig,
    /// The subject and the nickname that set it.
    pub subject: Option<(String, String)>,
    /// Bare JID and affiliation, `none` left out.
    pub affiliations: Vec<(String, Affiliation)>,
}

fn whois_str(w: Whois) -> &'static str {
    match w {
        Whois::Moderators => "moderators",
        Whois::Anyone => "anyone",
    }
}

/// Writes the room whole (replacing what was stored).
pub fn save(conn: &Db, service: &str, r: &StoredRoom) -> Result<(), SqlError> {
    let tx = conn.transaction()?;
    let c = &r.config;
    tx.execute(
        "INSERT INTO muc_rooms (service, room, name, description, public, members_only,
             moderated, password, max_users, whois, history_length, subject, subject_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (service, room) DO UPDATE SET name = excluded.name,
             description = excluded.description, public = excluded.public,
             members_only = excluded.members_only, moderated = excluded.moderated,
             password = excluded.password, max_users = excluded.max_users,
             whois = excluded.whois, history_length = excluded.history_length,
             subject = excluded.subject, subject_by = excluded.subject_by",
        params![
            service,
            r.room,
            c.name,
            c.description,
            c.public,
            c.members_only,
            c.moderated,
            c.password,
            c.max_users as i64,
            whois_str(c.whois),
            c.history_length as i64,
            r.subject.as_ref().map(|(_, s)| s.as_str()),
            r.subject.as_ref().map(|(by, _)| by.as_str()),
        ],
    )?;
    tx.execute(
        "DELETE FROM muc_affiliations WHERE service = ?1 AND room = ?2",
        params![service, r.room],
    )?;
    for (jid, a) in &r.affiliations {
        tx.execute(
            "INSERT INTO muc_affiliations (service, room, jid, affiliation) VALUES (?1, ?2, ?3, ?4)",
            params![service, r.room, jid, a.as_str()],
        )?;
    }
    tx.commit()
}

/// Forgets a room (destroyed, or no longer persistent).
pub fn delete(conn: &Db, service: &str, room: &str) -> Result<(), SqlError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM muc_affiliations WHERE service = ?1 AND room = ?2",
        params![service, room],
    )?;
    tx.execute(
        "DELETE FROM muc_rooms WHERE service = ?1 AND room = ?2",
        params![service, room],
    )?;
    tx.commit()
}

/// Every stored room of `service`.
pub fn load(conn: &Db, service: &str) -> Result<Vec<StoredRoom>, SqlError> {
    let mut rooms = conn.query_map(
        "SELECT room, name, description, public, members_only, moderated, password,
                max_users, whois, history_length, subject, subject_by
         FROM muc_rooms WHERE service = ?1 ORDER BY room",
        params![service],
        |row| {
            let subject: Option<String> = row.get(10)?;
            let by: Option<String> = row.get(11)?;
            Ok(StoredRoom {
                room: row.get(0)?,
                config: RoomConfig {
                    name: row.get(1)?,
                    description: row.get(2)?,
                    persistent: true,
                    public: row.get(3)?,
                    members_only: row.get(4)?,
                    moderated: row.get(5)?,
                    password: row.get(6)?,
                    max_users: row.get::<_, i64>(7)?.max(1) as usize,
                    whois: match row.get::<_, String>(8)?.as_str() {
                        "anyone" => Whois::Anyone,
                        _ => Whois::Moderators,
                    },
                    history_length: row.get::<_, i64>(9)?.max(0) as usize,
                },
                subject: subject.map(|s| (by.unwrap_or_default(), s)),
                affiliations: Vec::new(),
            })
        },
    )?;
    for r in &mut rooms {
        let rows = conn.query_map(
            "SELECT jid, affiliation FROM muc_affiliations WHERE service = ?1 AND room = ?2
             ORDER BY jid",
            params![service, r.room],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
        )?;
        for (jid, a) in rows {
            if let Some(a) = Affiliation::parse(&a) {
                r.affiliations.push((jid, a));
            }
        }
    }
    Ok(rooms)
}
