//! Queries on `spare_processes`: the warm spares alive now, so a start after a crash can
//! stop those an earlier run left behind.

use sqlx::SqliteExecutor;

pub struct NewSpare<'a> {
    pub pid: u32,
    pub start_time: u64,
    pub conversation_id: &'a str,
    pub project_path: &'a str,
    pub now: i64,
}

pub async fn insert(ex: impl SqliteExecutor<'_>, s: &NewSpare<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT OR REPLACE INTO spare_processes (pid, start_time, conversation_id, project_path, \
         created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(i64::from(s.pid))
    .bind(s.start_time as i64)
    .bind(s.conversation_id)
    .bind(s.project_path)
    .bind(s.now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Forgets a spare (stopped, or taken by a session that records its pid itself).
pub async fn remove(ex: impl SqliteExecutor<'_>, pid: u32) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM spare_processes WHERE pid = ?")
        .bind(i64::from(pid))
        .execute(ex)
        .await?;
    Ok(())
}

/// Every recorded spare: (pid, start time).
pub async fn all(ex: impl SqliteExecutor<'_>) -> sqlx::Result<Vec<(u32, u64)>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT pid, start_time FROM spare_processes")
        .fetch_all(ex)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(pid, start)| (pid as u32, start as u64))
        .collect())
}

/// The project folders of the most recently used sessions, newest first, distinct.
pub async fn recent_projects(
    ex: impl SqliteExecutor<'_>,
    limit: usize,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT project_path FROM sessions GROUP BY project_path \
         ORDER BY MAX(last_activity_at) DESC LIMIT ?",
    )
    .bind(limit as i64)
    .fetch_all(ex)
    .await
}
