use std::time::Duration;

use super::*;

async fn tickets(window: &Arc<AckWindow>, from: u32, n: u32) -> Vec<Ticket> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(window.reserve(from.wrapping_add(i)).await);
    }
    out
}

#[tokio::test]
async fn h_is_the_contiguous_prefix_of_finished_stanzas() {
    let window = AckWindow::new();
    let mut t: Vec<Option<Ticket>> = tickets(&window, 0, 5).await.into_iter().map(Some).collect();
    // 1 and 2 finish first: nothing is acknowledged while 0 is in flight.
    t[2].take();
    t[1].take();
    assert_eq!(window.advance(), None);
    assert_eq!(window.h(), 0);
    // 0 finishes: h passes 0, 1 and 2 at once.
    t[0].take();
    assert_eq!(window.advance(), Some(3));
    assert_eq!(window.advance(), None, "nothing new");
    t[4].take();
    assert_eq!(window.advance(), None, "3 is still in flight");
    t[3].take();
    assert_eq!(window.advance(), Some(5));
}

#[tokio::test]
async fn an_abandoned_stanza_is_never_acknowledged_nor_what_follows_it() {
    let window = AckWindow::new();
    let mut t = tickets(&window, 0, 3).await;
    let last = t.pop().unwrap();
    let middle = t.pop().unwrap();
    drop(t);
    middle.abandon();
    drop(last);
    assert_eq!(window.advance(), Some(1));
    assert!(window.any_abandoned());
    assert_eq!(window.advance(), None);
    assert_eq!(window.h(), 1, "h stops before the abandoned stanza");
}

#[tokio::test]
async fn a_full_window_makes_the_reader_wait_until_the_oldest_finishes() {
    let window = AckWindow::new();
    let mut all = tickets(&window, 0, WINDOW).await;
    assert!(!window.has_room(WINDOW));
    let next = window.reserve(WINDOW);
    tokio::pin!(next);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), next.as_mut())
            .await
            .is_err(),
        "a number beyond the window was taken"
    );
    // A later one finishing makes no room: the oldest holds the prefix.
    drop(all.pop());
    assert_eq!(window.advance(), None);
    drop(all.remove(0));
    assert_eq!(window.advance(), Some(1));
    let t = tokio::time::timeout(Duration::from_secs(1), next)
        .await
        .expect("room once the oldest finished");
    assert_eq!(t.seq(), WINDOW);
    // Slot 0 is reused by WINDOW: the newcomer is not taken as finished.
    assert_eq!(window.advance(), None);
}

#[tokio::test]
async fn the_count_wraps_at_two_to_the_thirty_two() {
    let start = u32::MAX - 2;
    let window = AckWindow::starting_at(start);
    let t = tickets(&window, start, 6).await;
    assert_eq!(t.last().unwrap().seq(), 2);
    drop(t);
    assert_eq!(window.advance(), Some(3));
}

#[tokio::test]
async fn a_finished_ticket_wakes_the_writer() {
    let window = AckWindow::new();
    let t = window.reserve(0).await;
    let w = window.clone();
    let writer = tokio::spawn(async move {
        w.finished().await;
        w.advance()
    });
    tokio::task::yield_now().await;
    drop(t);
    assert_eq!(writer.await.unwrap(), Some(1));
}

#[tokio::test]
async fn what_keeps_h_back_behind_a_finished_stanza_is_held_and_reported_when_it_finishes() {
    let window = AckWindow::new();
    let mut t: Vec<Option<Ticket>> = tickets(&window, 0, 6).await.into_iter().map(Some).collect();
    t[1].take();
    t[2].take();
    t[4].take();
    assert_eq!(window.advance(), None, "0 keeps h back");
    // 5 is unfinished with nothing finished after it: holding it would free nothing.
    assert_eq!(window.hold(6), vec![0, 3]);
    assert_eq!(window.advance(), Some(5), "h passes the held ones");
    assert_eq!(window.hold(6), Vec::<u32>::new(), "nothing is held twice");
    assert!(window.take_finished_held().is_empty());
    t[3].take();
    t[0].take();
    assert_eq!(window.take_finished_held(), vec![3, 0]);
    assert_eq!(
        window.advance(),
        None,
        "a held stanza finishing does not move h"
    );
    t[5].take();
    assert_eq!(window.advance(), Some(6));
}

#[tokio::test]
async fn only_what_was_taken_before_the_mark_is_held() {
    let window = AckWindow::new();
    let mut t: Vec<Option<Ticket>> = tickets(&window, 0, 4).await.into_iter().map(Some).collect();
    t[1].take();
    t[3].take();
    assert_eq!(window.hold(2), vec![0], "2 was taken after the mark");
    assert_eq!(window.advance(), Some(2));
    drop(t);
}

#[tokio::test]
async fn a_held_ticket_that_finishes_after_its_slot_was_taken_again_does_not_finish_the_newcomer() {
    let window = AckWindow::new();
    let mut all = tickets(&window, 0, WINDOW).await;
    let oldest = all.remove(0);
    drop(all);
    assert_eq!(window.hold(WINDOW), vec![0]);
    assert_eq!(window.advance(), Some(WINDOW));
    let newcomer = tokio::time::timeout(Duration::from_secs(1), window.reserve(WINDOW))
        .await
        .expect("room once h passed the held one");
    drop(oldest);
    assert_eq!(window.take_finished_held(), vec![0]);
    assert_eq!(
        window.advance(),
        None,
        "slot 0 is the newcomer's, unfinished"
    );
    drop(newcomer);
    assert_eq!(window.advance(), Some(WINDOW + 1));
}

#[tokio::test]
async fn holding_and_finishing_at_once_never_lose_a_stanza() {
    // Many rounds of a ticket finishing on another thread while the writer holds: each
    // stanza ends up either finished in order or held and reported, never neither.
    for _ in 0..200 {
        let window = AckWindow::new();
        let mut t = tickets(&window, 0, 3).await;
        let last = t.pop().unwrap();
        drop(last);
        let racing = t.pop().unwrap();
        let thread = std::thread::spawn(move || drop(racing));
        let held = window.hold(3);
        thread.join().unwrap();
        let reported = window.take_finished_held();
        let h = window.advance();
        assert!(held.contains(&0));
        assert_eq!(
            held.contains(&1),
            reported.contains(&1),
            "{held:?} {reported:?}"
        );
        assert_eq!(h, Some(3));
        drop(t);
        assert_eq!(window.take_finished_held(), vec![0]);
    }
}
