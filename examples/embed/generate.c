/* Embedding the melt runtime from C: load a compiled model, generate
 * greedily from a prompt, print the tokens.
 *
 *   embed MODEL.melt CHECKPOINT_DIR TOKEN...
 */
#include <melt/runtime.h>

#include <stdio.h>
#include <stdlib.h>

static int check(melt_status status, const char *what) {
  if (status == MELT_OK)
    return 0;
  fprintf(stderr, "embed: %s failed (%s): %s\n", what,
          melt_status_name(status), melt_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: embed MODEL.melt CHECKPOINT_DIR TOKEN...\n");
    return 2;
  }
  int n = argc - 3;
  int *prompt = malloc(sizeof(int) * (size_t)n);
  for (int i = 0; i < n; ++i)
    prompt[i] = atoi(argv[3 + i]);

  melt_model *model = NULL;
  melt_session *session = NULL;
  int sequence = 0, failed = 0;
  melt_session_options options = {256, 256};
  if (check(melt_model_load(argv[1], argv[2], &model), "loading the model") ||
      check(melt_session_create(model, &options, &session),
            "creating a session") ||
      check(melt_session_add_sequence(session, &sequence), "adding a sequence") ||
      check(melt_session_append(session, sequence, prompt, (size_t)n, NULL),
            "prefill")) {
    failed = 1;
  }
  printf("runtime %s generated:", melt_runtime_version());
  for (int step = 0; !failed && step < 16; ++step) {
    const float *logits = NULL;
    size_t vocab = 0;
    int token = 0;
    failed = check(melt_session_logits(session, sequence, &logits, &vocab),
                   "logits") ||
             check(melt_sample_greedy(logits, vocab, &token), "sampling") ||
             check(melt_session_append(session, sequence, &token, 1, NULL),
                   "decode");
    if (!failed)
      printf(" %d", token);
  }
  printf("\n");
  if (session)
    melt_session_destroy(session);
  if (model)
    melt_model_destroy(model);
  free(prompt);
  return failed;
}
