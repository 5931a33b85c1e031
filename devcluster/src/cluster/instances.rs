//! Bot instances and the generation of each one's latest certificates (`lib/auth/bot.go`).

use std::collections::HashMap;
use std::sync::Mutex;

/// A bot instance and the generation of its latest certificates.
struct Instance {
    bot_name: String,
    generation: u64,
}

/// Every bot instance the cluster has made, by instance ID.
#[derive(Default)]
pub(super) struct Instances(Mutex<HashMap<String, Instance>>);

impl Instances {
    /// Records a new bot instance, whose first certificates are generation 1.
    pub(super) fn insert(&self, bot_name: &str, instance_id: &str) {
        self.0.lock().expect("instance lock").insert(
            instance_id.to_owned(),
            Instance {
                bot_name: bot_name.to_owned(),
                generation: 1,
            },
        );
    }

    /// The generation of an instance's latest certificates.
    pub(super) fn generation(&self, instance_id: &str) -> Option<u64> {
        self.0
            .lock()
            .expect("instance lock")
            .get(instance_id)
            .map(|i| i.generation)
    }

    /// How many instances the bot has had.
    pub(super) fn count(&self, bot_name: &str) -> usize {
        self.0
            .lock()
            .expect("instance lock")
            .values()
            .filter(|i| i.bot_name == bot_name)
            .count()
    }

    /// Whether `presented` is the instance's latest generation; if not, why not (the detail of
    /// Teleport's mismatch error).
    pub(super) fn check(&self, instance_id: &str, presented: u64) -> Result<(), String> {
        match self.generation(instance_id) {
            Some(stored) if stored == presented => Ok(()),
            Some(stored) => Err(format!("stored={stored}, presented={presented}")),
            None => Err(format!("instance not found, presented={presented}")),
        }
    }

    /// Moves the instance from generation `presented` to `next`, if no other rejoin of it got
    /// there first (a compare-and-swap, as Auth's backend write is); if one did, why not.
    pub(super) fn advance(
        &self,
        instance_id: &str,
        presented: u64,
        next: u64,
    ) -> Result<(), String> {
        let mut instances = self.0.lock().expect("instance lock");
        match instances.get_mut(instance_id) {
            Some(instance) if instance.generation == presented => {
                instance.generation = next;
                Ok(())
            }
            Some(instance) => Err(format!(
                "stored={}, presented={presented}",
                instance.generation
            )),
            None => Err(format!("instance not found, presented={presented}")),
        }
    }
}
