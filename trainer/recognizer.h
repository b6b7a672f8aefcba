// trainer/recognizer.h — the logic of `moe-asr recognize`, WeNet's wenet/bin/recognize.py for a U2++
// (MoE) model (u2pp_moe_wenet.md §6; asr_toolkits.md §5.1 and "Evaluation outputs"):
//
//  * The test set (--test_data) is a moe-asr shard manifest (JSON lines with "path"/"num_utts": stored
//    fbank), a Kaldi data dir (a directory with wav.scp, text [, segments]) or a WeNet data.list (JSON
//    lines with "key"/"wav"/"txt"); detect_test_data_format tells them apart and says why.
//  * The model: config from --config (a WeNet train.yaml, model part via trainer/wenet_yaml.h) or, by
//    default, the weights file's config attribute; weights (global CMVN buffers included) from
//    --checkpoint (trainer/model_weights.h). Audio inputs get Kaldi fbank with dataset_conf.fbank_conf's
//    num_mel_bins / frame_shift / frame_length and dither 0 (WeNet decodes without dither).
//  * Decoding: the encoder per WeNet's _forward_encoder (model/streaming_encoder.h: full context,
//    chunk mask, or chunk by chunk with --simulate_streaming), batched over --batch_size utterances when
//    not streaming (the training encoder's eval forward over a padded batch), then every --modes search
//    per utterance (model/search.h decode_utterance).
//  * Output: <result_dir>/<mode>/text, one "key text" line per utterance in test-set order (WeNet's
//    '{} {}'.format(key, text): an empty hypothesis is "key "), text = the tokenizer's detokenisation
//    (units joined, "▁" -> space). Written atomically (tmp + rename) by rank 0.
//  * Under mpirun utterance i goes to rank i % world; every rank decodes its share and rank 0 merges
//    the lines back in test-set order. Every fallible step ends with an agreement across ranks, so an
//    error on one rank becomes the same error (naming that rank) on all of them: no rank hangs.
//  * Measurements (docs/recognition.md): RTF = processing seconds / audio seconds and RTFx = 1 / RTF
//    (processing: fbank for audio inputs — shards hold precomputed features — plus CMVN, encoder, CTC
//    head and the searches of all modes; not file reading or model loading); with --simulate_streaming
//    and a chunk > 0, first-token and last-token latency on a virtual real-time clock driven by the
//    incremental StreamingEncoder API (streaming_finish_times).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/run_context.h"
#include "core/status.h"
#include "data_pipeline/data_list.h"
#include "data_pipeline/fbank.h"
#include "model/encoder.h"
#include "model/expert_dispatch.h"
#include "model/model_config.h"
#include "model/parameter_table.h"
#include "model/search.h"
#include "model/streaming_encoder.h"
#include "parallel/communicator.h"

namespace moeasr {

// ---- The test set ------------------------------------------------------------------------------------

enum class TestDataFormat { kShardManifest, kKaldiDataDir, kWenetDataList };
// "shard manifest", "Kaldi data dir", "WeNet data.list".
const char* test_data_format_name(TestDataFormat format);

// A directory -> Kaldi data dir; a file whose first non-blank line is a JSON object with "path" and
// "num_utts" -> shard manifest, with "key" and "wav" -> data.list. *why says what decided it. Errors:
// a missing path (NotFound), an unreadable file (IoError), an empty file (InvalidArgument: "holds no
// utterances"), a first line that is neither (InvalidArgument naming the file and the three formats).
StatusOr<TestDataFormat> detect_test_data_format(const std::string& path, std::string* why);

struct TestUtterance {
  std::string key;
  int64_t shard = -1;      // shard manifest: index into TestSet::shard_paths
  int64_t shard_utt = -1;  // and the utterance inside that shard
  Utterance audio;         // Kaldi dir / data.list: the audio file and segment
};

struct TestSet {
  TestDataFormat format = TestDataFormat::kShardManifest;
  std::string path;
  std::string detection;                 // why the format was chosen, for the log
  std::vector<std::string> shard_paths;  // shard manifest only
  std::vector<TestUtterance> utts;       // in test-set order
};

// Detects the format and lists the utterances (shards are opened and validated for their keys; audio
// is not read). An empty test set is an InvalidArgument "... holds no utterances".
StatusOr<TestSet> read_test_set(const std::string& path);

// ---- The model ---------------------------------------------------------------------------------------

// A U2++ model for recognition on one process (all experts local).
struct RecognitionModel {
  ModelConfig config;
  std::string config_source;  // the yaml file, or "<checkpoint> (config attribute)"
  FbankConfig fbank;          // for audio inputs (dither 0)
  std::unique_ptr<ParameterTable> table;
  std::unique_ptr<ParameterStore<float>> store;
  LocalExpertDispatcher<float> dispatcher;
  std::vector<float> pe_table;          // [max_len, d] for the batched encoder
  EncoderParams<float> encoder_params;  // the training encoder's binding (batched eval forward)
  std::unique_ptr<StreamingEncoder<float>> encoder;
  std::unique_ptr<SearchModel<float>> search;
};

// The model config from a WeNet yaml (config_path non-empty) or the checkpoint's config attribute;
// fbank from the yaml's dataset_conf.fbank_conf (num_mel_bins must equal input_dim). Weights via
// load_model_weights: a checkpoint of another model shape is an error naming the tensor.
StatusOr<std::unique_ptr<RecognitionModel>> load_recognition_model(const std::string& config_path,
                                                                   const std::string& checkpoint);

// The encoder output of a batch of utterances (each feats[b] is [frames[b], F]) without streaming:
// full context (decoding_chunk_size < 0) or the chunk mask (> 0), one padded eval forward of the
// training encoder (batch 1 goes through StreamingEncoder::encode). out[b] gets [L_b, d]; utterances
// shorter than 7 frames get L_b = 0. CHECK-fails on simulate_streaming (a per-utterance path).
Status encode_batch(std::vector<std::vector<float>>* out, RecognitionModel* model,
                    const std::vector<const float*>& feats, const std::vector<int64_t>& frames,
                    const EncodeOptions& options, const RunContext& ctx);

// ---- Options and results -----------------------------------------------------------------------------

struct RecognizeOptions {          // WeNet recognize.py flag names
  std::string config;              // --config; "" = the checkpoint's config attribute
  std::string checkpoint;          // --checkpoint (moe-asr weights .h5)
  std::string test_data;           // --test_data
  std::string dict;                // --dict (units.txt)
  std::string bpe_model;           // --bpe_model (optional; BPE detokenisation)
  std::vector<std::string> modes;  // --modes
  EncodeOptions encode;            // --decoding_chunk_size, --num_decoding_left_chunks, --simulate_streaming
  SearchOptions search;            // --beam_size, --ctc_weight, --reverse_weight
  int64_t batch_size = 1;          // --batch_size (WeNet's default is 16)
  std::string result_dir;          // --result_dir
  int num_threads = 1;             // --num_threads (OpenMP threads per process)
  // --device: cpu, or cuda (the rank's local GPU: weights, encoder, CTC head and decoders on the
  // device, the CTC prefix beam search on the host; --simulate_streaming stays on the CPU).
  std::string device = "cpu";
  bool bf16_matmul = false;  // --precision bf16 (with --device cuda)
};

// Flags alone (no files): required flags present, known modes, --decoding_chunk_size != 0, search
// options in range, batch_size >= 1, num_threads >= 1. Messages name the flag.
Status validate_recognize_options(const RecognizeOptions& options);

struct LatencyStats {
  int64_t count = 0;  // utterances measured
  double mean_ms = 0, p50_ms = 0, p90_ms = 0, max_ms = 0;
};

// Mean and nearest-rank percentiles (p50 = the ceil(0.5 n)-th smallest) of `seconds`, in ms.
LatencyStats summarize_latencies(std::vector<double> seconds);

struct RecognizeSummary {
  TestDataFormat format = TestDataFormat::kShardManifest;
  std::string detection;
  int world = 1;
  int64_t num_utts = 0;            // the whole test set
  double audio_seconds = 0;        // sum over utterances
  double processing_seconds = 0;   // sum over utterances (all ranks)
  double feature_seconds = 0;      // fbank part of processing (audio inputs; 0 for shards)
  bool features_included = false;  // true for audio inputs
  double wall_seconds = 0;         // decoding loop, slowest rank
  double rtf() const { return audio_seconds > 0 ? processing_seconds / audio_seconds : 0.0; }
  double rtfx() const { return processing_seconds > 0 ? audio_seconds / processing_seconds : 0.0; }
  std::vector<std::string> modes;
  std::vector<std::string> text_files;    // per mode: <result_dir>/<mode>/text
  std::vector<int64_t> empty_hypotheses;  // per mode
  bool latency_measured = false;          // --simulate_streaming with a chunk > 0
  LatencyStats first_token;               // utterances whose streaming greedy result has a token
  std::vector<LatencyStats> last_token;   // per mode
  std::vector<std::string> warnings;      // also logged
};

// Runs the whole recognition. `comm` = nullptr: one process. Collective over `comm` otherwise (every
// rank returns the same Status; only rank 0's summary has the merged numbers and files).
StatusOr<RecognizeSummary> recognize(const RecognizeOptions& options, Communicator* comm);

// The lines `moe-asr recognize` prints (test set, files, RTF/RTFx, latency).
std::string format_recognize_summary(const RecognizeSummary& summary, const RecognizeOptions& options);

// ---- Pieces, exposed for tests -----------------------------------------------------------------------

// WeNet's result line: key, one space, text (so an empty hypothesis is "key ").
std::string hypothesis_line(const std::string& key, const std::string& text);

// The test-set indices rank `rank` of `world` decodes: i with i % world == rank, ascending.
std::vector<int64_t> utterances_of_rank(int64_t num_utts, int rank, int world);
// Rank 0's merge: per_rank[r] holds rank r's lines in its own order; returns them in test-set order.
// InvalidArgument when the counts do not match utterances_of_rank.
StatusOr<std::vector<std::string>> merge_rank_lines(const std::vector<std::vector<std::string>>& per_rank,
                                                    int64_t num_utts);

// The virtual real-time clock of the latency measurement: packet i arrives at arrival[i] seconds of
// audio time and takes processing[i] seconds on one worker that handles packets in order; returns
// each packet's finish time: f[i] = max(arrival[i], f[i-1]) + processing[i].
std::vector<double> streaming_finish_times(const std::vector<double>& arrival,
                                           const std::vector<double>& processing);

// Audio time (seconds) at which fbank frame `frame` is complete: (frame * shift + window) / rate.
double fbank_frame_end_seconds(const FbankConfig& fbank, int64_t frame);

}  // namespace moeasr
