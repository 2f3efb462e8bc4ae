"""The executor's KV cache: preallocated per-layer buffers with per-row slot bookkeeping.

Rows advance together in *slots*; a slot may hold a padding token for some rows (left padding,
or padding between a shared prefix and per-row suffixes). ``valid`` says which slots hold real
tokens, ``positions`` holds each slot's position id, so masks and rotary positions never depend on
a layer's cache length (transformers' ``get_seq_length()`` reads layer 0 only) or on layer numbering.
"""
from __future__ import annotations

import torch


class SkipKVCache:
    """Per-layer key/value buffers [batch, kv_heads, capacity, head_dim], grown on demand."""

    def __init__(self, num_layers: int, batch: int, device: torch.device, capacity: int = 0) -> None:
        self.num_layers = num_layers
        self.batch = batch
        self.device = device
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.length = 0  # slots in use
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self._write_at = 0  # first slot of the tokens being processed

    # --- slot bookkeeping -------------------------------------------------------------
    def reserve(self, extra: int) -> None:
        """Make room for `extra` more slots (amortised growth)."""
        need = self.length + extra
        if need <= self.capacity:
            return
        new_cap = max(need, int(self.capacity * 1.5) + 16)
        grow = new_cap - self.capacity
        self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch, grow)], 1)
        self.positions = torch.cat([self.positions, self.positions.new_zeros(self.batch, grow)], 1)
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                if buf is not None:
                    pad = buf.new_zeros(buf.shape[0], buf.shape[1], grow, buf.shape[3])
                    store[i] = torch.cat([buf, pad], 2)
        self.capacity = new_cap

    def begin(self, valid: torch.Tensor) -> torch.Tensor:
        """Claim slots for a [batch, q] block of tokens; returns their position ids."""
        q = valid.shape[1]
        self.reserve(q)
        start = self.length
        positions = self.next_pos[:, None] + valid.long().cumsum(1) - 1
        positions = positions.clamp_min(0)
        self.valid[:, start:start + q] = valid
        self.positions[:, start:start + q] = positions
        self.next_pos = self.next_pos + valid.long().sum(1)
        self._write_at = start
        self.length = start + q
        return positions

    @torch.inference_mode()
    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (their buffers are overwritten by later writes)."""
        assert 0 <= length <= self.length
        self.length = length
        self.valid[:, length:] = False
        self.next_pos = self.valid[:, :length].long().sum(1)

    @torch.inference_mode()
    def keep_first(self, counts: list[int]) -> None:
        """Row r keeps only its first counts[r] real tokens; its later slots become padding, so
        the next tokens of each row continue right after what it kept (per-row truncation)."""
        keep = torch.tensor(counts, dtype=torch.long, device=self.device)
        seen = self.valid[:, :self.length].long().cumsum(1)
        self.valid[:, :self.length] &= seen <= keep[:, None]
        self.next_pos = self.valid[:, :self.length].long().sum(1)
        used = self.valid[:, :self.length].any(0).nonzero()
        self.length = int(used[-1]) + 1 if len(used) else 0  # slots no row uses any more are reused

    def mask(self, q: int, window: int | None = None) -> torch.Tensor:
        """Boolean [batch, 1, q, length] mask for the last q slots: causal, valid keys only,
        optionally a sliding window; every query may see itself (so padding rows never give NaN)."""
        length = self.length
        key_slots = torch.arange(length, device=self.device)
        query_slots = torch.arange(length - q, length, device=self.device)
        allowed = self.valid[:, None, :length] & (key_slots[None, None, :] <= query_slots[None, :, None])
        if window is not None:
            qpos = self.positions[:, length - q:length, None]
            kpos = self.positions[:, None, :length]
            allowed = allowed & (qpos - kpos < window)
        allowed = allowed | (key_slots[None, None, :] == query_slots[None, :, None])
        return allowed[:, None]

    # --- the transformers Cache protocol used by attention modules -----------------------
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this forward's keys/values at the claimed slots; return all keys/values so far."""
        self.write(layer_idx, key, value)
        end = self.length
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def write(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.keys[layer_idx] is None:
            shape = (self.batch, key.shape[1], self.capacity, key.shape[3])
            self.keys[layer_idx] = key.new_zeros(shape)
            self.values[layer_idx] = value.new_zeros(shape)
        start = self._write_at
        self.keys[layer_idx][:, :, start:start + key.shape[2]] = key
        self.values[layer_idx][:, :, start:start + value.shape[2]] = value

    def get_seq_length(self, layer_idx: int = 0) -> int:  # for code that asks; the executor does not
        return self.length

    # --- batch reshaping ----------------------------------------------------------------
    def _map_rows(self, fn) -> "SkipKVCache":
        out = SkipKVCache.__new__(SkipKVCache)
        out.__dict__.update(self.__dict__)
        out.valid, out.positions, out.next_pos = fn(self.valid), fn(self.positions), fn(self.next_pos)
        out.keys = [fn(k) if k is not None else None for k in self.keys]
        out.values = [fn(v) if v is not None else None for v in self.values]
        out.batch = out.valid.shape[0]
        return out

    def repeat(self, n: int) -> "SkipKVCache":
        """n copies of a batch-1 cache (shared prefix -> one row per continuation)."""
        assert self.batch == 1, "repeat() expects a batch-1 cache"
        return self._map_rows(lambda t: t.repeat_interleave(n, 0))

    def select(self, rows: torch.Tensor) -> "SkipKVCache":
        """Keep only the given rows (drop finished sequences)."""
        return self._map_rows(lambda t: t.index_select(0, rows))

    @staticmethod
    def gather_rows(parts: list[tuple[torch.Tensor, "SkipKVCache"]]) -> "SkipKVCache":
        """One cache from parts (original row indices, a cache of those rows), rows in original order.
        A part that left a generation early holds fewer slots: its missing last slots are masked
        padding (not valid), which no mask lets a query see, so every row continues as it was."""
        length = max(c.length for _, c in parts)
        order = torch.cat([rows for rows, _ in parts])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)

        def joined(tensors: list[torch.Tensor | None], template: torch.Tensor | None, dim: int) -> torch.Tensor | None:
            if template is None:
                return None
            fitted = []
            for t, (_, c) in zip(tensors, parts):
                if t is None:  # a layer this part never wrote: zeros (its slots are masked anyway)
                    shape = list(template.shape)
                    shape[0] = c.batch
                    t = template.new_zeros(shape)
                t = t.narrow(dim, 0, min(t.shape[dim], length))
                if t.shape[dim] < length:
                    pad = list(t.shape)
                    pad[dim] = length - t.shape[dim]
                    t = torch.cat([t, t.new_zeros(pad)], dim)
                fitted.append(t)
            return torch.cat(fitted, 0).index_select(0, inverse)

        last = parts[-1][1]
        out = SkipKVCache.__new__(SkipKVCache)
        out.__dict__.update(last.__dict__)
        out.valid = joined([c.valid for _, c in parts], last.valid, 1)
        out.positions = joined([c.positions for _, c in parts], last.positions, 1)
        out.next_pos = torch.cat([c.next_pos for _, c in parts]).index_select(0, inverse)
        for name in ("keys", "values"):
            stores = [getattr(c, name) for _, c in parts]
            layers = []
            for i in range(last.num_layers):
                template = next((store[i] for store in stores if store[i] is not None), None)
                layers.append(joined([store[i] for store in stores], template, 2))
            setattr(out, name, layers)
        out.batch, out.capacity, out.length, out._write_at = len(order), length, length, length
        return out
