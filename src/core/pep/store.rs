//! PEP's tables (migration in [`crate::core::storage::MIGRATIONS`]): nodes with their
//! configuration, items with publisher, id, payload and time, and XEP-0049 private XML.
//! Every function takes the connection and runs on the database thread; a publish is one
//! transaction, so its quota and precondition checks cannot race another publish.

use crate::core::storage::{params, Db, OptionalExtension, SqlError};

use super::config::{ConfigChange, NodeConfig};

/// One stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub publisher: String,
    /// The payload element, serialised.
    pub payload: Vec<u8>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored (or, for a node without persistence, kept as the last item only).
    Done { config: NodeConfig },
    /// The publish-options do not match the existing node's configuration.
    Conflict,
    /// Creating the node would exceed the account's node quota.
    TooManyNodes,
}

/// A publish, as one transaction needs it.
pub struct Publish {
    pub owner: String,
    pub node: String,
    pub item_id: String,
    pub publisher: String,
    pub payload: Vec<u8>,
    /// publish-options: preconditions on an existing node, the configuration of a new one.
    pub options: ConfigChange,
    /// The configuration a node created without options gets.
    pub defaults: NodeConfig,
    pub max_nodes: usize,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn config_from_row(r: &crate::core::storage::Row, at: usize) -> Result<NodeConfig, SqlError> {
    let access: String = r.get(at)?;
    let send_last: String = r.get(at + 3)?;
    Ok(NodeConfig {
        access: access.parse().unwrap_or_default(),
        persist_items: r.get(at + 1)?,
        max_items: r.get(at + 2)?,
        send_last: send_last.parse().unwrap_or_default(),
    })
}

pub fn node_config(conn: &Db, owner: &str, node: &str) -> Result<Option<NodeConfig>, SqlError> {
    conn.query_row(
        "SELECT access_model, persist_items, max_items, send_last FROM pep_nodes
         WHERE owner = ?1 AND node = ?2",
        params![owner, node],
        |r| config_from_row(r, 0),
    )
    .optional()
}

/// The account's nodes with their configuration, by name.
pub fn nodes(conn: &Db, owner: &str) -> Result<Vec<(String, NodeConfig)>, SqlError> {
    conn.query_map(
        "SELECT node, access_model, persist_items, max_items, send_last FROM pep_nodes
         WHERE owner = ?1 ORDER BY node",
        params![owner],
        |r| Ok((r.get(0)?, config_from_row(r, 1)?)),
    )
}

fn insert_node(conn: &Db, owner: &str, node: &str, c: &NodeConfig) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO pep_nodes (owner, node, access_model, persist_items, max_items, send_last,
           created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            owner,
            node,
            c.access.as_str(),
            c.persist_items,
            c.max_items,
            c.send_last.as_str(),
            now()
        ],
    )?;
    Ok(())
}

/// Keeps the node's `keep` latest items.
fn trim(conn: &Db, owner: &str, node: &str, keep: u32) -> Result<(), SqlError> {
    conn.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND seq NOT IN
           (SELECT seq FROM pep_items WHERE owner = ?1 AND node = ?2 ORDER BY seq DESC LIMIT ?3)",
        params![owner, node, keep],
    )?;
    Ok(())
}

/// How many items a node keeps: a node that does not persist items keeps the last one only,
/// for last-published-item delivery.
fn kept(c: &NodeConfig) -> u32 {
    if c.persist_items {
        c.max_items.max(1)
    } else {
        1
    }
}

/// XEP-0060 §7.1 with auto-create (§7.1.4) and publish-options preconditions (§7.1.5).
pub fn publish(conn: &Db, p: &Publish) -> Result<Published, SqlError> {
    let tx = conn.transaction()?;
    let existing = node_config(&tx, &p.owner, &p.node)?;
    let config = match existing {
        Some(c) if !p.options.matches(&c) => return Ok(Published::Conflict),
        Some(c) => c,
        None => {
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pep_nodes WHERE owner = ?1",
                params![p.owner],
                |r| r.get(0),
            )?;
            if count as usize >= p.max_nodes {
                return Ok(Published::TooManyNodes);
            }
            let c = p.options.apply(&p.defaults);
            insert_node(&tx, &p.owner, &p.node, &c)?;
            c
        }
    };
    // A republished id replaces the old item and becomes the latest.
    tx.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND item_id = ?3",
        params![p.owner, p.node, p.item_id],
    )?;
    tx.execute(
        "INSERT INTO pep_items (owner, node, item_id, publisher, payload, published)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![p.owner, p.node, p.item_id, p.publisher, p.payload, now()],
    )?;
    trim(&tx, &p.owner, &p.node, kept(&config))?;
    tx.commit()?;
    Ok(Published::Done { config })
}

/// Replaces a node's configuration (owner's configure form); trims to the new `max_items`.
/// `Ok(false)` when there is no such node.
pub fn configure(conn: &Db, owner: &str, node: &str, c: &NodeConfig) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE pep_nodes SET access_model = ?3, persist_items = ?4, max_items = ?5,
           send_last = ?6 WHERE owner = ?1 AND node = ?2",
        params![
            owner,
            node,
            c.access.as_str(),
            c.persist_items,
            c.max_items,
            c.send_last.as_str()
        ],
    )?;
    if n == 1 {
        trim(&tx, owner, node, kept(c))?;
    }
    tx.commit()?;
    Ok(n == 1)
}

/// The node's items, oldest first: with `ids`, those of them that exist; else the `max`
/// latest (all without `max`).
pub fn items(
    conn: &Db,
    owner: &str,
    node: &str,
    max: Option<u32>,
    ids: &[String],
) -> Result<Vec<Item>, SqlError> {
    let row = |r: &crate::core::storage::Row| {
        Ok(Item {
            id: r.get(0)?,
            publisher: r.get(1)?,
            payload: r.get(2)?,
        })
    };
    if !ids.is_empty() {
        let mut out = Vec::new();
        for id in ids {
            let item = conn
                .query_row(
                    "SELECT item_id, publisher, payload FROM pep_items
                     WHERE owner = ?1 AND node = ?2 AND item_id = ?3",
                    params![owner, node, id],
                    row,
                )
                .optional()?;
            if let Some(item) = item {
                out.push(item);
            }
        }
        return Ok(out);
    }
    // No `max`: a limit no node reaches (SQLite's -1 for none is an error in PostgreSQL).
    let limit = max.map_or(i64::MAX, i64::from);
    let mut out: Vec<Item> = conn.query_map(
        "SELECT item_id, publisher, payload FROM pep_items WHERE owner = ?1 AND node = ?2
         ORDER BY seq DESC LIMIT ?3",
        params![owner, node, limit],
        row,
    )?;
    out.reverse();
    Ok(out)
}

/// Removes one item; `Ok(false)` if it was not there.
pub fn retract(conn: &Db, owner: &str, node: &str, id: &str) -> Result<bool, SqlError> {
    let n = conn.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND item_id = ?3",
        params![owner, node, id],
    )?;
    Ok(n == 1)
}

/// Removes a node with its items; `Ok(false)` if there was none.
pub fn delete_node(conn: &Db, owner: &str, node: &str) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2",
        params![owner, node],
    )?;
    let n = tx.execute(
        "DELETE FROM pep_nodes WHERE owner = ?1 AND node = ?2",
        params![owner, node],
    )?;
    tx.commit()?;
    Ok(n == 1)
}

/// Removes every item of a node, keeping the node (XEP-0060 §8.5).
pub fn purge(conn: &Db, owner: &str, node: &str) -> Result<(), SqlError> {
    conn.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2",
        params![owner, node],
    )?;
    Ok(())
}

/// Every node of the account that sends its last item on presence, with its configuration
/// and latest item (nodes without items are left out): what last-published-item delivery
/// sends. One query, through the `pep_items_latest` index.
pub fn last_items(conn: &Db, owner: &str) -> Result<Vec<(String, NodeConfig, Item)>, SqlError> {
    conn.query_map(
        "SELECT n.node, n.access_model, n.persist_items, n.max_items, n.send_last,
                i.item_id, i.publisher, i.payload
         FROM pep_nodes n JOIN pep_items i ON i.owner = n.owner AND i.node = n.node
         WHERE n.owner = ?1 AND n.send_last = ?2
           AND i.seq = (SELECT MAX(seq) FROM pep_items WHERE owner = n.owner AND node = n.node)
         ORDER BY n.node",
        params![owner, super::config::SendLast::OnSubAndPresence.as_str()],
        |r| {
            Ok((
                r.get(0)?,
                config_from_row(r, 1)?,
                Item {
                    id: r.get(5)?,
                    publisher: r.get(6)?,
                    payload: r.get(7)?,
                },
            ))
        },
    )
}

/// Removes everything PEP and private storage keep for an account.
pub fn remove_account(conn: &Db, owner: &str) -> Result<(), SqlError> {
    for table in ["pep_items", "pep_nodes", "private_xml"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE owner = ?1"),
            params![owner],
        )?;
    }
    Ok(())
}

// ---- XEP-0049 -------------------------------------------------------------------------------

/// The stored private element `{ns}name`, serialised.
pub fn private_get(
    conn: &Db,
    owner: &str,
    name: &str,
    ns: &str,
) -> Result<Option<Vec<u8>>, SqlError> {
    conn.query_row(
        "SELECT payload FROM private_xml WHERE owner = ?1 AND name = ?2 AND ns = ?3",
        params![owner, name, ns],
        |r| r.get(0),
    )
    .optional()
}

/// Stores private elements (replacing each's previous value); `Ok(false)`, storing none,
/// when the account would then keep more than `max` of them.
pub fn private_set(
    conn: &Db,
    owner: &str,
    elements: &[(String, String, Vec<u8>)],
    max: usize,
) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    for (name, ns, payload) in elements {
        tx.execute(
            "INSERT INTO private_xml (owner, name, ns, payload) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (owner, name, ns) DO UPDATE SET payload = ?4",
            params![owner, name, ns, payload],
        )?;
    }
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM private_xml WHERE owner = ?1",
        params![owner],
        |r| r.get(0),
    )?;
    if count as usize > max {
        return Ok(false);
    }
    tx.commit()?;
    Ok(true)
}
