"""What one stage hands the next: the candidate folder (training -> evaluate / export / monitor),
the export folder (export -> serving), the batched forward pass and the interleaved timer that
every stage measuring a model shares."""
