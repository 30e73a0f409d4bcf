/* Memory bandwidth by a copy loop (bytes read + written per second), with
 * as many threads as OpenMP gives: the roofline of CPU decode. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  size_t bytes = (argc > 1 ? strtoull(argv[1], 0, 10) : 512) << 20;
  char *a = malloc(bytes), *b = malloc(bytes);
  memset(a, 1, bytes);
  memset(b, 2, bytes);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = omp_get_wtime();
#pragma omp parallel
    {
      int n = omp_get_num_threads(), i = omp_get_thread_num();
      size_t chunk = bytes / n;
      memcpy(b + i * chunk, a + i * chunk, i == n - 1 ? bytes - i * chunk : chunk);
    }
    double s = omp_get_wtime() - t0, gbps = 2.0 * bytes / s / 1e9;
    if (gbps > best)
      best = gbps;
  }
  printf("{\"bench\": \"copy_bandwidth\", \"threads\": %d, \"gb_per_s\": %.2f}\n",
         omp_get_max_threads(), best);
  return a[bytes / 2] + b[bytes / 3] == 0;
}
