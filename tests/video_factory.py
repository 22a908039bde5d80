"""Real video files for the tests, written with OpenCV by the same code as the demo's."""

from agegate.edge.demo import FRAME_SIZE, face_frame, write_empty_video, write_face_video

__all__ = ["FRAME_SIZE", "face_frame", "write_empty_video", "write_face_video"]
