//! When outputs may write their files: [`WriteGate`].

use tokio::sync::watch;

/// Whether, and once, the outputs of a renewal may write their files. A renewal stores the new
/// bot identity while its outputs are already issued with it (`renewal::cycle`), so that their
/// round trips overlap the storing; their files go out only once the identity is stored, and
/// never when storing it failed (the last good identity and the files made with it stay as
/// they were).
#[derive(Clone)]
pub struct WriteGate(watch::Receiver<Option<bool>>);

/// Opens (or shuts for good) the [`WriteGate`] it came with.
pub struct GateKeeper(watch::Sender<Option<bool>>);

impl WriteGate {
    /// A gate open from the start: the identity the outputs are issued with is stored already.
    pub fn open() -> Self {
        Self(watch::channel(Some(true)).1)
    }

    /// A gate shut until its keeper says; dropping the keeper without a word shuts it for good.
    pub fn shut() -> (GateKeeper, Self) {
        let (keeper, gate) = watch::channel(None);
        (GateKeeper(keeper), Self(gate))
    }

    /// Waits for the keeper: `true` when the files may be written.
    pub async fn passable(&self) -> bool {
        let mut gate = self.0.clone();
        gate.wait_for(Option::is_some)
            .await
            .is_ok_and(|state| *state == Some(true))
    }
}

impl GateKeeper {
    /// Opens the gate (`true`: the identity is stored) or shuts it for good (`false`).
    pub fn decide(self, open: bool) {
        // No gate left to tell (the outputs ended) is fine.
        let _ = self.0.send(Some(open));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_opens_shuts_or_stays_shut_with_its_keeper() {
        assert!(WriteGate::open().passable().await);

        let (keeper, gate) = WriteGate::shut();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.passable().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "passed before the keeper decided");
        keeper.decide(true);
        assert!(waiting.await.unwrap());
        assert!(gate.passable().await);

        let (keeper, gate) = WriteGate::shut();
        keeper.decide(false);
        assert!(!gate.passable().await);

        let (keeper, gate) = WriteGate::shut();
        drop(keeper);
        assert!(!gate.passable().await);
    }
}
