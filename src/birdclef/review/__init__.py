"""The review loop: a local web app to verify detections, precision from the answers, answers back into training.

- :mod:`~birdclef.review.source`: the results reviewed (analyze folder or submission CSV) and their audio;
- :mod:`~birdclef.review.queue`: per-class queues (top, stratified by score bins, margin);
- :mod:`~birdclef.review.reviews`: the reviews table (append-only log + atomic compaction, under a lock);
- :mod:`~birdclef.review.render`: spectrogram and audio snippets, cached;
- :mod:`~birdclef.review.session`: one results folder's queues, answers and precision (app and CLI share it);
- :mod:`~birdclef.review.precision`: stratified precision with intervals, thresholds, Raven tables;
- :mod:`~birdclef.review.retrain`: the app's head refit and re-score;
- :mod:`~birdclef.review.server`: the Flask app and its static page.

Reviews as training examples live below (:mod:`birdclef.data.reviewed`), since training must not import this.
"""
