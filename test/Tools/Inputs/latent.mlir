// Not a model: @forward returns only its cache.
module {
  func.func @forward(%ids: tensor<?xi32>, %pos: tensor<?xi64>, %c: !melt.latent_cache<latent = 16, rope = 8, bf16>, %l: tensor<?x16xbf16>, %r: tensor<?x8xbf16>) -> !melt.latent_cache<latent = 16, rope = 8, bf16> {
    %c1 = melt.latent_cache_append %c, %l, %r at %pos : !melt.latent_cache<latent = 16, rope = 8, bf16>, tensor<?x16xbf16>, tensor<?x8xbf16>, tensor<?xi64>
    return %c1 : !melt.latent_cache<latent = 16, rope = 8, bf16>
  }
}
