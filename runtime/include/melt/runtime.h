/*===- melt/runtime.h - the melt runtime C API -------------------*- C -*-===*
 *
 * The C API of the melt runtime. Every fallible call returns a melt_status;
 * no C++ exception ever crosses this boundary.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MELT_RUNTIME_H
#define MELT_RUNTIME_H

#include "melt/version.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes of the C API. */
typedef enum melt_status {
  MELT_OK = 0,
  MELT_INVALID_ARGUMENT = 1,
  MELT_NOT_FOUND = 2,
  MELT_OUT_OF_MEMORY = 3,
  MELT_RESOURCE_EXHAUSTED = 4,
  MELT_UNSUPPORTED = 5,
  MELT_INVALID_ARTIFACT = 6,
  MELT_DEVICE_ERROR = 7,
  MELT_INTERNAL = 8,
} melt_status;

/* A short English name of a status code ("ok", "invalid argument", ...);
 * never NULL, also for codes this runtime does not know. */
const char *melt_status_name(int status);

/* The runtime's version, e.g. "0.1.0". */
const char *melt_runtime_version(void);

/* Whether an artifact of format version major.minor can be loaded. */
int melt_artifact_version_supported(unsigned major, unsigned minor);

/* The message of the last failed call on this thread ("" if none). It names
 * the file, field, index or argument at fault. */
const char *melt_last_error(void);

/*---------------------------------------------------------------------------
 * Models and sessions. Handles are opaque; every function checks them, and
 * destroying a handle twice returns MELT_INVALID_ARGUMENT.
 *-------------------------------------------------------------------------*/
typedef struct melt_model melt_model;
typedef struct melt_session melt_session;

/* Loads a compiled artifact; its weights are read from `checkpoint_dir`
 * (the checkpoint it was compiled against), which may be NULL for an
 * artifact compiled with --embed-weights. */
melt_status melt_model_load(const char *artifact_path,
                            const char *checkpoint_dir, melt_model **model);
/* The same from artifact bytes in memory (copied; the caller keeps its
 * buffer). */
melt_status melt_model_load_from_memory(const void *artifact, size_t size,
                                        const char *checkpoint_dir,
                                        melt_model **model);
/* The same on a device: "cpu" (what melt_model_load does) or "cuda:N".
 * The model's sessions run there; its weights are read from the
 * checkpoint and placed in the device's memory once, shared by all its
 * sessions. Sessions of a model on a GPU take turns (one stream). */
melt_status melt_model_load_on(const char *artifact_path,
                               const char *checkpoint_dir, const char *device,
                               melt_model **model);
/* For benchmarks without a checkpoint (as transformers' random init):
 * every weight filled with values drawn from `seed` (uniform, std 0.02;
 * norm scales 1, router biases 0), on `device` (NULL: "cpu"). */
melt_status melt_model_load_random(const char *artifact_path,
                                   unsigned long long seed, const char *device,
                                   melt_model **model);
/* The device the model's sessions run on ("cpu", "cuda:0"), or "" for an
 * invalid handle. */
const char *melt_model_device(const melt_model *model);
/* A line about the device's hardware (e.g. the GPU's name and memory). */
const char *melt_model_device_description(const melt_model *model);
/* The device kind the artifact was compiled for (melt-compile --target:
 * "cpu", "cuda"), or "" for an invalid handle. Any device runs a model;
 * one of the target's kind follows its compiled kernel choices. */
const char *melt_model_target(const melt_model *model);
/* Fails while sessions of the model are alive: destroy them first. */
melt_status melt_model_destroy(melt_model *model);
/* Vocabulary size, or 0 for an invalid handle. */
long long melt_model_vocab_size(const melt_model *model);
/* The weight bytes a decode step of one sequence reads at least: every
 * weight of the forward pass at the precision the compiled model keeps it
 * in (FP8 a byte a value plus its 128x128 block scales, BF16 two, f32
 * four), an embedding table's one row and the top-k routed experts of
 * each MoE layer; caches and activations aside. Over the copy bandwidth
 * (melt_model_copy_bandwidth) it gives a batch-1 decode's roofline. */
melt_status melt_model_decode_weight_bytes(const melt_model *model,
                                           long long *bytes);
/* Measures the model's device's memory bandwidth by a device-to-device
 * copy (bytes read plus written a second, in GB/s; 1 GiB of device memory
 * for the moment it runs). MELT_UNSUPPORTED on the CPU. */
melt_status melt_model_copy_bandwidth(melt_model *model,
                                      double *gigabytes_per_second);

/* Tokens a page of the KV cache holds (a sequence takes whole pages). */
#define MELT_KV_PAGE_TOKENS 64

/* Session options. The KV cache is one pool of pages of
 * MELT_KV_PAGE_TOKENS tokens shared by all sequences; kv_capacity_tokens
 * sets its size (rounded up to whole pages; 0 means one full context). It is
 * reserved in the device's memory when the session is created (on the CPU the
 * system commits a page of memory when it is first written); a pool too large
 * for the device is an error from melt_session_create (MELT_OUT_OF_MEMORY). */
typedef struct melt_session_options {
  long long max_context;        /* tokens per sequence, > 0 */
  long long kv_capacity_tokens; /* tokens in the cache over all sequences */
} melt_session_options;

melt_status melt_session_create(melt_model *model,
                                const melt_session_options *options,
                                melt_session **session);
/* Ends a session. Its KV cache memory and its recorded decode steps (a
 * device that records steps as graphs: CUDA) stay with the model for the
 * next session created with a cache of as many pages, which then replays
 * those steps instead of recording them again; one session's worth is
 * kept at a time, released by melt_model_release_closed_session, by
 * melt_model_destroy or by creating a session of another cache size. The
 * environment variable MELT_KEEP_CLOSED_SESSION=0 releases everything
 * here. */
melt_status melt_session_destroy(melt_session *session);
/* Releases what a closed session left with the model (melt_session_destroy):
 * its KV cache memory and recorded steps, e.g. before another model is
 * loaded on the same device. Nothing kept is not an error. */
melt_status melt_model_release_closed_session(melt_model *model);
melt_status melt_session_add_sequence(melt_session *session, int *sequence);
melt_status melt_session_remove_sequence(melt_session *session, int sequence);

/* One sequence's part of a batched step. */
typedef struct melt_batch_entry {
  int sequence;
  const int *tokens;
  size_t n_tokens;
} melt_batch_entry;

/* Runs one batch: each entry's tokens (a prefill, or one token to decode)
 * are appended to its sequence, all sequences in one forward pass, and
 * each gets its next-token logits. On failure (a bad token, a full
 * context or KV cache: MELT_RESOURCE_EXHAUSTED) no sequence changes. */
melt_status melt_session_step(melt_session *session,
                              const melt_batch_entry *entries, size_t n);

/* The same step for greedy decoding: next_tokens[i] receives the greedy
 * next token of entries[i]'s sequence (the largest logit, the first on
 * ties, as melt_sample_greedy), picked on the model's device; the logits
 * stay there (a batch of 64 over a 129280-token vocabulary would bring
 * 33 MB back per step), so melt_session_logits is an error for these
 * sequences until their next melt_session_step. next_tokens may be the
 * entries' own token array: it is written after they are read. */
melt_status melt_session_step_greedy(melt_session *session,
                                     const melt_batch_entry *entries, size_t n,
                                     int *next_tokens);

/* `steps` greedy decode steps of n sequences in one call: step 0 appends
 * entries[i]'s one token (count 1) to its sequence, each later step the
 * token the step before picked for it, on the model's device, which runs
 * the steps back to back (the host waits once, at the end). tokens receives
 * steps * n ids, step-major: tokens[s * n + i] is what the s-th of `steps`
 * calls of melt_session_step_greedy would return for entries[i]. Nothing
 * stops early (an end-of-sequence token is generated past like any other).
 * The context and KV cache must hold all the steps (checked first:
 * MELT_RESOURCE_EXHAUSTED); on any failure no sequence changes. */
melt_status melt_session_generate_greedy(melt_session *session,
                                         const melt_batch_entry *entries,
                                         size_t n, size_t steps, int *tokens);

/* The same step with each entry's next token drawn as melt_sample draws it
 * (declared below), picked on the model's device: one draw from `state`
 * per entry, in entry order, so that the tokens are those of
 * melt_session_step followed by melt_sample on each entry's logits in turn
 * (temperature 0 is greedy and draws nothing); `state` advances only when
 * the step succeeds. On the GPU, top_k from 1 to 1024 is sampled there;
 * other settings bring the logits back to sample them. */
struct melt_sampling;
melt_status melt_session_step_sample(melt_session *session,
                                     const melt_batch_entry *entries, size_t n,
                                     const struct melt_sampling *params,
                                     unsigned long long *state,
                                     int *next_tokens);

/* Pages of the KV cache in use and in all. */
melt_status melt_session_kv_pages(melt_session *session, long long *used,
                                  long long *total);
/* Bytes the session's KV cache takes in its device's memory (reserved when
 * the session was created), and of them one page's, over all layers: a
 * device may keep a latent cache in BF16 where its attention is BF16 (the
 * CUDA device), else F32. */
melt_status melt_session_kv_bytes(melt_session *session, long long *total,
                                  long long *per_page);

/* A step of one sequence. If `all_logits` is not NULL it receives
 * n x vocab floats: the logits after each appended token. */
melt_status melt_session_append(melt_session *session, int sequence,
                                const int *tokens, size_t n, float *all_logits);
/* The next-token logits of a sequence, valid until its next append. */
melt_status melt_session_logits(melt_session *session, int sequence,
                                const float **logits, size_t *vocab);

/* Per-expert load counters of the session (token-to-expert assignments
 * of every MoE router since creation, and how often two experts were
 * chosen for one token; a prefill's last MoE layer routes only the tokens
 * whose logits the step wants, unless MELT_LOGIT_ROWS_ONLY=0) as JSON,
 * the input of melt-plan-experts:
 *   {"routers": [{"gate": "model.layers.3.mlp.gate", "experts": 256,
 *                 "counts": [...], "pairs": [[i, j, n], ...]}, ...]}
 * Writes at most `capacity` bytes (NUL-terminated) to `buffer` and the full
 * size, terminator included, to `size`: call with capacity 0 to ask. */
melt_status melt_session_expert_load_json(melt_session *session, char *buffer,
                                          size_t capacity, size_t *size);

/* The index of the largest logit (the first one on ties). */
melt_status melt_sample_greedy(const float *logits, size_t n, int *token);

/* Sampling parameters: temperature 0 is greedy; top_k 0 and top_p 1 keep
 * every token. */
typedef struct melt_sampling {
  float temperature; /* >= 0, finite */
  int top_k;         /* >= 0 */
  float top_p;       /* in (0, 1] */
} melt_sampling;

/* Draws a token from softmax(logits / temperature) restricted to the top_k
 * tokens and to the smallest set whose probability reaches top_p. `state`
 * is the caller's random state: seed it once, and the same seed gives the
 * same tokens. */
melt_status melt_sample(const float *logits, size_t n,
                        const melt_sampling *params, unsigned long long *state,
                        int *token);

#ifdef __cplusplus
}
#endif

#endif /* MELT_RUNTIME_H */
