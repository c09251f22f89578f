//! Cutting an upload's duration into chunks that are encoded independently.
//!
//! Chunks start at exact multiples of the segment duration and hold `segments_per_chunk` segments, so a
//! chunk boundary is always a segment boundary: each chunk's encode puts keyframes at its own start and
//! every segment after it ([`super::chunk_args`]), and those land on the same global grid in every rung. The
//! plan and its chunks are serde types because they travel in queue messages as JSON.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest segment duration [`plan_chunks`] accepts.
pub const MIN_SEGMENT: Duration = Duration::from_secs(1);
/// Longest segment duration [`plan_chunks`] accepts.
pub const MAX_SEGMENT: Duration = Duration::from_secs(60);
/// Most chunks in one plan.
pub const MAX_CHUNKS: u64 = 100_000;

/// How an upload is cut: the segment duration, and the chunks in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// HLS segment duration; every chunk starts at a multiple of it.
    pub segment: Duration,
    /// The chunks, in order, covering the whole duration without gaps or overlaps.
    pub chunks: Vec<Chunk>,
}

impl ChunkPlan {
    /// The total duration the chunks cover.
    pub fn duration(&self) -> Duration {
        self.chunks
            .last()
            .map(|c| c.start + c.duration)
            .unwrap_or_default()
    }
}

/// One chunk: a time range of the source, encoded on its own for every rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chunk {
    /// Position in the plan, from 0.
    pub index: u32,
    /// Where it starts in the source: a multiple of the plan's segment duration.
    pub start: Duration,
    /// How long it is: `segments_per_chunk` segments, except for the last chunk.
    pub duration: Duration,
}

impl Chunk {
    /// A file name for this chunk's encode of a rung: `chunk_00003.mp4` (the output of
    /// [`super::chunk_args`] is MP4). Zero-padded so names sort in chunk order.
    pub fn file_name(&self) -> String {
        format!("chunk_{:05}.mp4", self.index)
    }
}

/// [`plan_chunks`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The segment duration is zero or outside [`MIN_SEGMENT`]..=[`MAX_SEGMENT`].
    #[error("segment duration {segment:?} must be between {min:?} and {max:?}")]
    Segment {
        /// The duration given.
        segment: Duration,
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },
    /// `segments_per_chunk` is zero.
    #[error("segments per chunk must be at least 1")]
    ZeroSegmentsPerChunk,
    /// The media has no duration.
    #[error("nothing to plan: the duration is zero")]
    EmptyMedia,
    /// The plan would have more than [`MAX_CHUNKS`] chunks.
    #[error("{chunks} chunks is more than the {max} a plan may have")]
    TooManyChunks {
        /// Chunks the plan would have.
        chunks: u64,
        /// The limit.
        max: u64,
    },
}

/// Cuts `duration` into chunks of `segments_per_chunk` × `segment`, the last one shorter.
///
/// A remainder shorter than half a segment is added to the previous chunk rather than made a chunk of its
/// own: the container's duration often runs a few milliseconds past the start of the last frame (12.012 s
/// for 360 frames at 29.97 fps), and a chunk starting after the last frame would have nothing to encode.
/// Plan with [`super::MediaInfo::video_duration`].
pub fn plan_chunks(
    duration: Duration,
    segment: Duration,
    segments_per_chunk: u32,
) -> Result<ChunkPlan, PlanError> {
    if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&segment) {
        return Err(PlanError::Segment {
            segment,
            min: MIN_SEGMENT,
            max: MAX_SEGMENT,
        });
    }
    if segments_per_chunk == 0 {
        return Err(PlanError::ZeroSegmentsPerChunk);
    }
    if duration.is_zero() {
        return Err(PlanError::EmptyMedia);
    }
    // At most 60 s × u32::MAX: fits a Duration.
    let chunk = segment * segments_per_chunk;
    let chunk_nanos = chunk.as_nanos();
    let full = duration.as_nanos() / chunk_nanos;
    let remainder = duration.as_nanos() - full * chunk_nanos;
    let merge_tail = remainder > 0 && remainder < segment.as_nanos() / 2 && full > 0;
    let count = full + u128::from(remainder > 0 && !merge_tail);
    if count > u128::from(MAX_CHUNKS) {
        return Err(PlanError::TooManyChunks {
            chunks: u64::try_from(count).unwrap_or(u64::MAX),
            max: MAX_CHUNKS,
        });
    }
    // `count` is at most MAX_CHUNKS, so every index fits a u32.
    let count = count as u32;
    let mut chunks = Vec::with_capacity(count as usize);
    let mut start = Duration::ZERO;
    for index in 0..count {
        let end = if index + 1 == count {
            duration
        } else {
            start + chunk
        };
        chunks.push(Chunk {
            index,
            start,
            duration: end - start,
        });
        start = end;
    }
    Ok(ChunkPlan { segment, chunks })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn spans(plan: &ChunkPlan) -> Vec<(u32, Duration, Duration)> {
        plan.chunks
            .iter()
            .map(|c| (c.index, c.start, c.duration))
            .collect()
    }

    #[test]
    fn chunks_start_on_segment_multiples_and_the_last_is_shorter() {
        let plan = plan_chunks(secs(12.0), secs(2.0), 2).unwrap();
        assert_eq!(plan.segment, secs(2.0));
        assert_eq!(
            spans(&plan),
            [
                (0, secs(0.0), secs(4.0)),
                (1, secs(4.0), secs(4.0)),
                (2, secs(8.0), secs(4.0))
            ]
        );
        let plan = plan_chunks(secs(13.0), secs(2.0), 2).unwrap();
        assert_eq!(plan.chunks.len(), 4);
        assert_eq!(
            plan.chunks[3],
            Chunk {
                index: 3,
                start: secs(12.0),
                duration: secs(1.0)
            }
        );
        assert_eq!(plan.duration(), secs(13.0));
        for chunk in &plan.chunks {
            assert_eq!(chunk.start.as_nanos() % plan.segment.as_nanos(), 0);
        }
    }

    #[test]
    fn a_tail_shorter_than_half_a_segment_joins_the_previous_chunk() {
        let plan = plan_chunks(Duration::from_millis(12_012), secs(2.0), 2).unwrap();
        assert_eq!(plan.chunks.len(), 3);
        assert_eq!(
            plan.chunks[2],
            Chunk {
                index: 2,
                start: secs(8.0),
                duration: Duration::from_millis(4012)
            }
        );
        assert_eq!(plan.duration(), Duration::from_millis(12_012));
        // Half a segment or more is a chunk of its own.
        let plan = plan_chunks(secs(13.0), secs(2.0), 2).unwrap();
        assert_eq!(plan.chunks.len(), 4);
        // A video shorter than one chunk is one chunk, however short.
        let plan = plan_chunks(Duration::from_millis(300), secs(2.0), 2).unwrap();
        assert_eq!(spans(&plan), [(0, secs(0.0), Duration::from_millis(300))]);
    }

    #[test]
    fn one_segment_per_chunk() {
        let plan = plan_chunks(secs(5.0), secs(2.0), 1).unwrap();
        assert_eq!(
            spans(&plan),
            [
                (0, secs(0.0), secs(2.0)),
                (1, secs(2.0), secs(2.0)),
                (2, secs(4.0), secs(1.0))
            ]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        let seg = |segment| PlanError::Segment {
            segment,
            min: MIN_SEGMENT,
            max: MAX_SEGMENT,
        };
        assert_eq!(
            plan_chunks(secs(10.0), Duration::ZERO, 2),
            Err(seg(Duration::ZERO))
        );
        assert_eq!(plan_chunks(secs(10.0), secs(0.5), 2), Err(seg(secs(0.5))));
        assert_eq!(plan_chunks(secs(10.0), secs(61.0), 2), Err(seg(secs(61.0))));
        assert_eq!(
            plan_chunks(secs(10.0), secs(2.0), 0),
            Err(PlanError::ZeroSegmentsPerChunk)
        );
        assert_eq!(
            plan_chunks(Duration::ZERO, secs(2.0), 2),
            Err(PlanError::EmptyMedia)
        );
        let huge = plan_chunks(Duration::MAX, secs(1.0), 1);
        assert!(matches!(
            huge,
            Err(PlanError::TooManyChunks { max: MAX_CHUNKS, .. })
        ));
        // The largest product does not overflow.
        assert_eq!(
            plan_chunks(secs(10.0), MAX_SEGMENT, u32::MAX)
                .unwrap()
                .chunks
                .len(),
            1
        );
    }

    #[test]
    fn plans_travel_as_json() {
        let plan = plan_chunks(secs(9.0), secs(2.0), 2).unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<ChunkPlan>(&json).unwrap(), plan);
        assert_eq!(plan.chunks[1].file_name(), "chunk_00001.mp4");
    }
}
