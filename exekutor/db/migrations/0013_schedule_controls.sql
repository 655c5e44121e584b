-- exekutor 0013: pausing a recurring job, and the job its last run enqueued (the dashboard's Schedules page).
--
-- paused_at: set while the schedule is paused (null: it runs). A worker still claims a paused schedule's ticks
-- (last_tick moves on, as for any tick) but inserts no job for them, so a resume starts at the next tick: the ticks
-- of the pause are not caught up, whatever catch_up says.
-- last_job_id: the job the last claimed tick (or a "run now") enqueued, for its outcome; not a foreign key: cleanup
-- deletes finished jobs, and the page then says the job is gone.
ALTER TABLE exekutor_schedules ADD COLUMN paused_at timestamptz, ADD COLUMN last_job_id uuid;
